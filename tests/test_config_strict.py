"""Strict configuration and the operator commands: every unknown key,
override, value, reason or log level is a one-line error naming it (exit 2);
`config` shows the effective configuration with sources, secrets masked;
`status`, `users list/remove`, `--version`."""

from __future__ import annotations

import json
import re

import pytest

from config.settings import ConfigError, load_settings
from tests.conftest import ROOT, run_cli

SAMPLE = str(ROOT / "samples" / "events_sample.csv")


def one_line_error(result, *needles: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_a_misspelled_profile_key_is_an_error_naming_it(tmp_path):
    text = (ROOT / "config" / "local.toml").read_text().replace('lateness = "10m"', 'latenes = "3h"')
    path = tmp_path / "typo.toml"
    path.write_text(text)
    result = run_cli("run", "--input", SAMPLE, "--config", str(path), "--data-dir", str(tmp_path))
    one_line_error(result, "config key pipeline.latenes: unknown key", "did you mean lateness?")


@pytest.mark.parametrize("body, needle", [
    ('[pipline]\nformat = "ndjson"\n', "config key pipline: unknown section (did you mean pipeline?)"),
    ('[rollups.extra]\nkey = ["customer_id"]\nwindows = "1h"\n', "config key rollups.extra.windows: unknown key"),
    ('[query]\nrollups = "customer_hourly"\n', "config key query.rollups: unknown key"),
    ('[dead_letters]\nmax_bytes = 10\n', "config key dead_letters.max_bytes: unknown key"),
    ('[logging]\nlevel = "LOUD"\n', "config key logging.level: unknown log level 'LOUD'"),
    ('[logging]\nprogress = "1m"\n', "config key logging.progress: unknown key"),
])
def test_unknown_sections_keys_and_values_in_a_profile(tmp_path, body, needle):
    path = tmp_path / "p.toml"
    path.write_text('[rollups.customer_hourly]\nkey = ["customer_id"]\nwindow = "1h"\n' + body)
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_settings(path, environ={})
    one_line_error(run_cli("config", "--config", str(path)), needle)


@pytest.mark.parametrize("name, value, needle", [
    ("RIVULET__PIPELINE__LATENCY", '"3h"', "environment RIVULET__PIPELINE__LATENCY: config key pipeline.latency: "
                                           "unknown key (did you mean lateness?)"),
    ("RIVULET__PIPELIN__LATENESS", '"3h"', "environment RIVULET__PIPELIN__LATENESS: config key pipelin: unknown section"),
    ("RIVULET__HTTP__PROT", "8081", "environment RIVULET__HTTP__PROT: config key http.prot: unknown key (did you mean port?)"),
    ("RIVULET__OPTIMIZELY__MAX_VISITOR", "3", "config key optimizely.max_visitor: unknown key (did you mean max_visitors?)"),
    ("RIVULET__PIPELINE__LATENESS", "soon", "environment RIVULET__PIPELINE__LATENESS: config key pipeline.lateness"),
    ("RIVULET__PIPELINE", "x", "environment RIVULET__PIPELINE: names a section"),
])
def test_a_misspelled_environment_override_is_an_error_naming_the_variable(tmp_path, name, value, needle):
    result = run_cli("run", "--input", SAMPLE, "--data-dir", str(tmp_path), env={name: value})
    one_line_error(result, needle)


def test_a_correct_override_still_works_and_says_where_it_came_from(tmp_path):
    settings = load_settings(environ={"RIVULET__PIPELINE__LATENESS": '"3h"'})
    assert settings.lateness.total_seconds() == 3 * 3600
    assert settings.sources["pipeline.lateness"] == "environment RIVULET__PIPELINE__LATENESS"
    assert settings.sources["pipeline.format"].startswith("file ")


def test_log_levels_are_validated():
    one_line_error(run_cli("--log-level", "LOUD", "run", "--input", SAMPLE),
                   "--log-level: unknown log level 'LOUD'", "DEBUG, INFO, WARNING, ERROR, CRITICAL")
    result = run_cli("--log-level", "info", "--version")
    assert result.returncode == 0


def test_replay_refuses_an_unknown_reason(tmp_path):
    letters = tmp_path / "dead.ndjson"
    letters.write_text("")
    result = run_cli("replay-dead-letter", str(letters), "--to", "console", "--reason", "nosuchreason",
                     "--data-dir", str(tmp_path))
    one_line_error(result, "--reason 'nosuchreason': unknown reason", "missing field", "late")
    ok = run_cli("replay-dead-letter", str(letters), "--to", "console", "--reason", "missing_field",
                 "--reason", "late", "--data-dir", str(tmp_path))
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("args", [
    ["query", "buckets", "--customer", "c", "--start", "2021-03-01T00:00:00Z", "--end", "2021-03-02T00:00:00Z"],
    ["export", "--rollup", "customer_hourly"],
])
def test_a_wrong_data_dir_is_an_error_not_an_empty_answer(tmp_path, args):
    wrong = tmp_path / "typo"
    result = run_cli(*args, "--data-dir", str(wrong))
    one_line_error(result, f"no count store at {wrong / 'counts.sqlite3'}")
    assert not wrong.exists()  # and nothing was created there


def test_config_prints_the_effective_configuration_with_sources_and_masked_secrets(tmp_path):
    env = {"RIVULET__PIPELINE__LATENESS": '"3h"', "RIVULET__OPTIMIZELY__SDK_KEY": "very-secret-sdk-key",
           "OPTIMIZELY_DATAFILE": "https://cdn.optimizely.com/datafiles/SECRETKEY123.json"}
    result = run_cli("config", "--data-dir", str(tmp_path), env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "very-secret-sdk-key" not in out and "SECRETKEY123" not in out
    assert re.search(r'^lateness = "3h"\s+# environment RIVULET__PIPELINE__LATENESS$', out, re.M)
    assert re.search(r'^format = "events-csv"\s+# file$', out, re.M)
    assert re.search(rf'^data_dir = "{re.escape(str(tmp_path))}"\s+# command line --data-dir$', out, re.M)
    assert re.search(r'^progress_interval = "1m"\s+# default$', out, re.M)
    assert re.search(r'^sdk_key = "\*\*\*"\s+# environment RIVULET__OPTIMIZELY__SDK_KEY$', out, re.M)
    assert re.search(r'^datafile = "https://cdn.optimizely.com/datafiles/\*\*\*.json"\s+# environment '
                     r'OPTIMIZELY_DATAFILE$', out, re.M)
    assert "[rollups.customer_hourly]" in out and "[http]" in out
    as_json = json.loads(run_cli("config", "--json", env=env).stdout)
    assert as_json["pipeline"]["lateness"] == {"value": "3h", "source": "environment RIVULET__PIPELINE__LATENESS"}
    assert as_json["optimizely"]["sdk_key"]["value"] == "***"


def test_status_shows_partitions_checkpoints_watermarks_and_lag(tmp_path):
    spool = tmp_path / "spool"
    assert run_cli("produce", "--input", SAMPLE, "--to", f"spool:{spool}", "--data-dir", str(tmp_path)).returncode == 0
    consumed = run_cli("consume", "--from", f"spool:{spool}", "--drain", "0.5", "--data-dir", str(tmp_path))
    assert consumed.returncode == 0, consumed.stderr
    result = run_cli("status", "--data-dir", str(tmp_path), "--from", f"spool:{spool}", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (job,) = report["jobs"]
    assert job["command"] == "consume" and job["state"] == "stopped"
    assert 0 <= job["checkpoint_age_seconds"] < 120
    (partition,) = job["partitions"].values()
    assert partition["position"] >= 1 and partition["watermark"].startswith("2021-03-01T")
    assert partition["newest_event"] == "2021-03-01T04:07:14Z" and partition["lag_seconds"] > 0
    group = report["transport"]["groups"]["default"]
    assert group["next_seq"] == partition["position"] and group["watermark"] == partition["watermark"]
    (stored,) = report["store"]["partitions"].values()
    assert stored["windows"] > 0
    text = run_cli("status", "--data-dir", str(tmp_path), "--from", f"spool:{spool}")
    assert "last checkpoint" in text.stdout and "group default: next seq" in text.stdout
    one_line_error(run_cli("status", "--data-dir", str(tmp_path / "nothing")), "nothing to report")


def test_users_list_and_remove(tmp_path):
    env = {"RIVULET_DATA_DIR": str(tmp_path)}
    for name in ("alice", "bob"):
        added = run_cli("users", "add", name, input="pw-of-" + name + "\n", env=env)
        assert added.returncode == 0, added.stderr
    listed = run_cli("users", "list", env=env)
    assert listed.stdout.split() == ["alice", "bob"]
    assert "pw-of" not in listed.stdout + listed.stderr
    removed = run_cli("users", "remove", "alice", env=env)
    assert removed.returncode == 0 and "removed user alice" in removed.stdout
    assert run_cli("users", "list", env=env).stdout.split() == ["bob"]
    one_line_error(run_cli("users", "remove", "alice", env=env), "no user 'alice'")
    stored = json.loads((tmp_path / "credentials.json").read_text())
    assert list(stored["users"]) == ["bob"]
    assert (tmp_path / "credentials.json").stat().st_mode & 0o077 == 0


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    from daemon.version import __version__

    assert result.stdout.strip() == f"rivulet {__version__}"


def test_status_reads_a_kinesis_lease_table(aws_env, tmp_path):
    from aws.settings import AwsConfig
    from producers.kinesis_lease_table import LeaseTable, ensure_lease_table
    from tests.aws_fixtures import unique

    table_name = unique("leases")
    env = {"RIVULET__AWS__CHECKPOINT_TABLE": table_name}
    config = AwsConfig(checkpoint_table=table_name)
    client, table = ensure_lease_table(config, "default", create=True)
    leases = LeaseTable(client, table, "events")
    assert leases.create("shardId-000000000000")
    lease = leases.take(leases.get("shardId-000000000000"), "worker-1")
    leases.checkpoint(lease, "worker-1", "4960", 0, 1_614_560_400_000_000)
    result = run_cli("status", "--config", str(ROOT / "config" / "aws.toml"), "--from", "kinesis:events",
                     "--data-dir", str(tmp_path), "--json", env=env)
    assert result.returncode == 0, result.stderr
    (shard,) = json.loads(result.stdout)["transport"]["shards"].items()
    assert shard == ("shardId-000000000000", {"owner": "worker-1", "checkpoint": "4960",
                                              "watermark": "2021-03-01T01:00:00Z", "finished": False, "parents": []})
