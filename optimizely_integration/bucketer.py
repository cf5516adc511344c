"""Bucket a user into an experiment's variation, or decide a feature flag,
with the SDK client of the current datafile. Shared by the HTTP routes and
the CLI; both render `BucketResult.to_response()`.

With `activate=True` (the HTTP bucketer's default) the SDK's `activate` is
used, so the impression leaves through the client's event dispatcher (the
`BulkEventDispatcher` → transport → bulk sink); with `activate=False` it is
`get_variation`, which sends nothing. Either way the variation is the SDK's.

Usage::

    bucketer = Bucketer(datafile_manager)
    result = bucketer.variation("checkout_flow_experiment", "cooper34523569", {"tier": "platinum"})
    result.to_response(debug=True)
    # {"variation": "one_step_checkout", "user": "cooper34523569",
    #  "experiment": "checkout_flow_experiment", "debug": {...}}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from optimizely.decision.optimizely_decide_option import OptimizelyDecideOption

from optimizely_integration.datafile import DatafileManager, DatafileState


class BucketerError(Exception):
    """A request the bucketer cannot answer. `status` is the HTTP status the
    routes use, `code` a stable machine-readable reason."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _debug(state: DatafileState, attributes: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    config = state.project_config
    return {
        "project_id": config.project_id,
        "account_id": config.account_id,
        "time": now.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "datafile": {"url": state.source.url, "revision": state.revision},
        "user_attributes": dict(attributes),
    }


@dataclass(frozen=True)
class BucketResult:
    variation: str | None  # None: not in the experiment (audience, traffic, not running)
    user: str
    experiment: str
    debug: dict[str, Any] = field(default_factory=dict)

    def to_response(self, debug: bool = False) -> dict[str, Any]:
        response: dict[str, Any] = {"variation": self.variation, "user": self.user, "experiment": self.experiment}
        if debug:
            response["debug"] = self.debug
        return response


@dataclass(frozen=True)
class DecideResult:
    flag: str
    user: str
    enabled: bool
    variation: str | None
    rule: str | None
    variables: dict[str, Any]
    reasons: list[str]
    debug: dict[str, Any] = field(default_factory=dict)

    def to_response(self, debug: bool = False) -> dict[str, Any]:
        response: dict[str, Any] = {
            "flag": self.flag,
            "user": self.user,
            "enabled": self.enabled,
            "variation": self.variation,
            "rule": self.rule,
            "variables": self.variables,
        }
        if debug:
            response["debug"] = {**self.debug, "reasons": self.reasons}
        return response


class Bucketer:
    def __init__(
        self, datafile_manager: DatafileManager, activate: bool = True, clock: Callable[[], datetime] = _utc_now
    ) -> None:
        self.datafile_manager = datafile_manager
        self.activate = activate
        self.clock = clock

    def _state(self) -> DatafileState:
        state = self.datafile_manager.state
        if state is None:
            raise BucketerError(503, "no_datafile", "no Optimizely datafile is loaded")
        return state

    @staticmethod
    def _check_user(user_id: str | None) -> str:
        if not user_id:
            raise BucketerError(400, "missing_user", "a user id is required")
        return user_id

    def variation(self, experiment_key: str | None, user_id: str | None, attributes: Mapping[str, Any] | None = None) -> BucketResult:
        """The variation key of `user_id` in `experiment_key` (None if not bucketed).

        Raises `BucketerError`: 400 missing experiment or user, 404 unknown
        experiment, 503 no datafile."""
        if not experiment_key:
            raise BucketerError(400, "missing_experiment", "the experiment key (e) is required")
        user = self._check_user(user_id)
        attributes = dict(attributes or {})
        state = self._state()  # one snapshot: the check and the decision use the same datafile
        if experiment_key not in state.project_config.experiment_key_map:
            raise BucketerError(
                404, "unknown_experiment", f"experiment {experiment_key!r} is not in datafile revision {state.revision}"
            )
        if self.activate:
            variation = state.client.activate(experiment_key, user, attributes)
        else:
            variation = state.client.get_variation(experiment_key, user, attributes)
        return BucketResult(variation, user, experiment_key, _debug(state, attributes, self.clock()))

    def decide(self, flag_key: str | None, user_id: str | None, attributes: Mapping[str, Any] | None = None) -> DecideResult:
        """The SDK's `decide` for a feature flag. With `activate=False` the
        decision event is disabled (`DISABLE_DECISION_EVENT`)."""
        if not flag_key:
            raise BucketerError(400, "missing_flag", "the flag key (flag) is required")
        user = self._check_user(user_id)
        attributes = dict(attributes or {})
        state = self._state()
        if flag_key not in state.project_config.feature_key_map:
            raise BucketerError(404, "unknown_flag", f"flag {flag_key!r} is not in datafile revision {state.revision}")
        options = [OptimizelyDecideOption.INCLUDE_REASONS]
        if not self.activate:
            options.append(OptimizelyDecideOption.DISABLE_DECISION_EVENT)
        decision = state.client.create_user_context(user, attributes).decide(flag_key, options)
        return DecideResult(
            flag_key,
            user,
            bool(decision.enabled),
            decision.variation_key,
            decision.rule_key,
            dict(decision.variables or {}),
            list(decision.reasons or []),
            _debug(state, attributes, self.clock()),
        )
