"""End to end in local mode, through the CLI, against the independent oracle."""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from bench.generate_events import generate
from tests.conftest import FIXTURES, run_cli
from tests.oracle import DEFAULT_ROLLUPS, HOUR, MINUTE, run_oracle, stamp_to_us


def exported(data_dir: Path, rollup: str, config: str | None = None) -> Counter:
    args = ["export", "--rollup", rollup, "--data-dir", str(data_dir)] + (["--config", config] if config else [])
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0][0] == "window_start" and rows[0][-1] == "count"
    body = rows[1:]
    assert body == sorted(body, key=lambda r: (r[0], r[1:-1])), "export is sorted by window start, then key"
    return Counter({(stamp_to_us(r[0]), r[1]): int(r[2]) for r in body})


def oracle_counts(result, rollup: str) -> Counter:
    return Counter(result.counts[rollup])


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A file with duplicates, malformed rows, mixed offsets, out-of-order rows and
    a few rows far behind (late under the default lateness)."""
    rng = random.Random(11)
    lines = list(generate(20_000, seed=5))
    for i in rng.sample(range(1000, len(lines)), 15):
        customer = f"{rng.getrandbits(48) % 2000:012x}"
        lines.insert(i, f"{customer},click,late-{i},2021-02-28T20:00:00.5Z")  # hours behind
    lines.insert(0, "customer_id,event_type,transaction_id,timestamp")
    lines.insert(500, "")
    lines.insert(700, "x,y,z,\x00bad")
    path = tmp_path_factory.mktemp("input") / "events.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path, lines


def test_exported_counts_equal_the_oracle(generated, tmp_path):
    path, lines = generated
    result = run_cli("run", "--input", str(path), "--data-dir", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    expected = run_oracle(lines, 10 * MINUTE, DEFAULT_ROLLUPS)
    assert expected.late >= 15 and expected.duplicates > 100 and expected.malformed > 10
    for rollup in DEFAULT_ROLLUPS:
        assert exported(tmp_path, rollup) == oracle_counts(expected, rollup), rollup
    assert (summary["valid"], summary["duplicates"], summary["late"], summary["malformed"]) == (
        expected.valid, expected.duplicates, expected.late, expected.malformed)

    letters = [json.loads(line) for line in (tmp_path / "dead_letters.ndjson").read_text().splitlines()]
    assert sorted(d["position"] for d in letters if d["reason"] == "late") == expected.late_positions
    assert sorted(d["position"] for d in letters if d["reason"] != "late") == expected.malformed_positions
    assert all(set(d) >= {"reason", "error", "source", "position", "record"} for d in letters)
    nul = [d for d in letters if d["position"] == 701]
    assert nul and nul[0]["encoding"] == "base64"


def test_rerun_into_the_same_data_dir_gives_the_same_counts_and_another_input_adds(generated, tmp_path):
    path, lines = generated
    for _ in range(2):
        assert run_cli("run", "--input", str(path), "--data-dir", str(tmp_path)).returncode == 0
    once = run_oracle(lines, 10 * MINUTE, DEFAULT_ROLLUPS)
    assert exported(tmp_path, "customer_hourly") == oracle_counts(once, "customer_hourly")

    other = tmp_path / "other.csv"
    other.write_text("zz,click,t1,2021-03-01T00:00:01Z\nzz,click,t2,2021-03-01T00:00:02Z\n")
    assert run_cli("run", "--input", str(other), "--data-dir", str(tmp_path)).returncode == 0
    expected = oracle_counts(once, "customer_hourly")
    expected[(stamp_to_us("2021-03-01T00:00:00Z"), "zz")] += 2
    assert exported(tmp_path, "customer_hourly") == expected


def test_raw_events_land_once_in_hive_partitions(generated, tmp_path):
    path, lines = generated
    assert run_cli("run", "--input", str(path), "--data-dir", str(tmp_path)).returncode == 0
    expected = run_oracle(lines, 10 * MINUTE, DEFAULT_ROLLUPS)
    store = tmp_path / "store"
    seen = Counter()
    for obj in store.glob("events/dt=*/hour=*/part-*.parquet"):
        _, dt, hour, _ = obj.relative_to(store).parts
        rows = pl.read_parquet(obj)
        assert set(rows["timestamp"].dt.strftime("dt=%Y-%m-%d")) == {dt}
        assert set(rows["timestamp"].dt.hour().cast(pl.String)) == {hour.removeprefix("hour=")}
        times = rows["timestamp"].dt.epoch("us")
        seen.update(zip(rows["customer_id"], rows["event_type"], rows["transaction_id"], times))
    assert sum(seen.values()) == expected.valid
    assert max(seen.values()) == 1
    aggregates = list(store.glob("aggregates/customer_hourly/dt=*/hour=*/part-*.parquet"))
    total = sum(pl.read_parquet(a)["count"].sum() for a in aggregates)
    assert total == expected.valid


def test_two_processes_give_the_same_counts(generated, tmp_path):
    path, lines = generated
    result = run_cli("run", "--input", str(path), "--data-dir", str(tmp_path), "--processes", "2", "--json")
    assert result.returncode == 0, result.stderr
    expected = run_oracle(lines, 10 * MINUTE, DEFAULT_ROLLUPS)
    for rollup in DEFAULT_ROLLUPS:
        assert exported(tmp_path, rollup) == oracle_counts(expected, rollup)


def test_produce_then_consume_through_a_spool(generated, tmp_path):
    path, lines = generated
    spool = f"spool:{tmp_path / 'spool'}"
    produced = run_cli("produce", "--input", str(path), "--to", spool, "--data-dir", str(tmp_path))
    assert produced.returncode == 0, produced.stderr
    consumed = run_cli("consume", "--from", spool, "--drain", "1", "--data-dir", str(tmp_path), "--json")
    assert consumed.returncode == 0, consumed.stderr
    expected = run_oracle(lines, 10 * MINUTE, DEFAULT_ROLLUPS)
    for rollup in DEFAULT_ROLLUPS:
        assert exported(tmp_path, rollup) == oracle_counts(expected, rollup)
    # The input spans minutes, so its hour windows are still open at the drain:
    # the committed offset stays at their first event and a restart replays
    # them. The replay must leave every count exact.
    again = run_cli("consume", "--from", spool, "--drain", "0.5", "--data-dir", str(tmp_path), "--json")
    assert again.returncode == 0, again.stderr
    for rollup in DEFAULT_ROLLUPS:
        assert exported(tmp_path, rollup) == oracle_counts(expected, rollup)


def test_consume_commits_past_final_windows_only(tmp_path):
    lines = list(generate(3000, seed=9, step_ms=10_000))  # about 8 hours of events
    path = tmp_path / "long.csv"
    path.write_text("\n".join(lines) + "\n")
    spool = f"spool:{tmp_path / 'spool'}"
    assert run_cli("produce", "--input", str(path), "--to", spool, "--data-dir", str(tmp_path)).returncode == 0
    first = json.loads(run_cli("consume", "--from", spool, "--drain", "1", "--data-dir", str(tmp_path), "--json").stdout)
    again = json.loads(run_cli("consume", "--from", spool, "--drain", "0.5", "--data-dir", str(tmp_path), "--json").stdout)
    # Only the events of the windows still open at the first drain come back.
    assert 0 < again["read"] < first["read"] / 4
    expected = run_oracle(lines, 10 * MINUTE, DEFAULT_ROLLUPS)
    for rollup in DEFAULT_ROLLUPS:
        assert exported(tmp_path, rollup) == oracle_counts(expected, rollup)


def test_seed_sample_default_lateness(tmp_path):
    sample = FIXTURES / "test_events_sample.csv"
    result = run_cli("run", "--input", str(sample), "--data-dir", str(tmp_path), "--json")
    summary = json.loads(result.stdout)
    # Documented in the README: 25 lines, 6 blank, 2 malformed, 6 late under 10m.
    assert (summary["read"], summary["valid"], summary["malformed"], summary["late"]) == (25, 11, 2, 6)
    human = run_cli("run", "--input", str(sample), "--data-dir", str(tmp_path / "h"))
    assert "all 6 are new; --lateness 2h would have counted them" in human.stdout
    assert (summary["late_duplicates"], summary["lateness_needed"]) == (0, "2h")


def test_seed_sample_with_three_hours_lateness_counts_every_valid_row(tmp_path):
    sample = FIXTURES / "test_events_sample.csv"
    lines = sample.read_text().splitlines()
    result = run_cli("run", "--input", str(sample), "--data-dir", str(tmp_path), "--lateness", "3h", "--json")
    assert json.loads(result.stdout)["late"] == 0
    expected = run_oracle(lines, 3 * HOUR, DEFAULT_ROLLUPS)
    assert expected.valid == 17
    assert exported(tmp_path, "customer_hourly") == oracle_counts(expected, "customer_hourly")
    query = run_cli("query", "buckets", "--customer", "b4f9279a0196e40632e947dd1a88e857",
                    "--start", "2021-03-01 00:30:00+00", "--end", "2021-03-01T04:00:00Z", "--data-dir", str(tmp_path))
    assert json.loads(query.stdout) == {
        "customer_id": "b4f9279a0196e40632e947dd1a88e857",
        "buckets": [
            {"ts_start_of_hour": "2021-03-01T00:00:00.000000Z", "count": 3},
            {"ts_start_of_hour": "2021-03-01T01:00:00.000000Z", "count": 3},
            {"ts_start_of_hour": "2021-03-01T02:00:00.000000Z", "count": 2},
            {"ts_start_of_hour": "2021-03-01T03:00:00.000000Z", "count": 4},
        ],
    }


def test_gdelt_sample_counts_each_country_once_per_event(tmp_path):
    from config.bindings import configure
    from config.settings import load_settings
    from daemon.job import parser_for, run_job
    from producers.file_source import FileSource
    from streams.utc import format_utc

    path = FIXTURES / "GDELT-MINI.TSV"
    settings = load_settings().with_overrides(data_dir=tmp_path, format="gdelt-tsv")
    root = configure(settings)
    arrival = stamp_to_us("2021-06-01T12:34:56Z")  # the injected processing-time clock
    summary = run_job(settings, FileSource(path, clock_us=lambda: arrival).batches(), parser_for(settings),
                      root.sinks(), wall_clock=lambda: arrival)
    expected = Counter()
    for line in path.read_text().splitlines():
        cols = line.split("\t")
        for country in {cols[1][:3], cols[2][:3]} - {""}:
            expected[(arrival - arrival % MINUTE, country)] += 1
    assert summary.valid == 50
    assert exported(tmp_path, "country_minutely") == expected
    assert format_utc(arrival - arrival % MINUTE) == "2021-06-01T12:34:00.000000Z"


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--input", "/nonexistent.csv"], "input file not found"),
        (["run", "--input", "x", "--lateness", "soon"], "--lateness"),
        (["query", "buckets", "--customer", "c", "--start", "2021-03-02T00:00:00Z", "--end", "2021-03-01T00:00:00Z"], "start must be before end"),
        (["query", "buckets", "--customer", "c", "--start", "nope", "--end", "2021-03-01T00:00:00Z"], "bad timestamp"),
        (["export", "--rollup", "nope"], "unknown rollup"),
        (["run", "--input", "x", "--format", "xml"], "unknown format"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(args, message, tmp_path):
    result = run_cli(*args, "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_bad_config_names_the_key(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[pipeline]\nlateness = "soon"\n[rollups.x]\nkey = ["customer_id"]\n')
    result = run_cli("run", "--input", "x", "--config", str(config))
    assert result.returncode == 2 and "pipeline.lateness" in result.stderr and result.stderr.count("\n") == 1


def test_no_arguments_runs_the_bundled_sample():
    result = run_cli(env={"RIVULET_DATA_DIR": str(Path(__import__("tempfile").mkdtemp()))})
    assert result.returncode == 0, result.stderr
    assert "records read" in result.stdout and "windows written" in result.stdout
