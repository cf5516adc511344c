"""The composition root (config/root.py): what it builds for a local profile,
that local mode never imports boto3, and that a transport's adapter options
are checked, never dropped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import inject
import pytest

from config.bindings import configure
from config.root import Components
from config.settings import load_settings
from config.transports import open_reader, open_writer
from consumers.ports import CountStore, DeadLetterSink, ObjectStore

ROOT = Path(__file__).resolve().parent.parent


def test_the_root_is_bound_and_builds_each_store_once(tmp_path: Path) -> None:
    root = configure(load_settings().with_overrides(data_dir=tmp_path))
    try:
        assert inject.instance(Components) is root
        assert inject.instance(CountStore) is root.count_store() is root.count_store()
        assert inject.instance(ObjectStore) is root.object_store()
        assert inject.instance(DeadLetterSink) is root.dead_letters()
        assert Path(root.dead_letters().path) == tmp_path / "dead_letters.ndjson"
        names = [getattr(sink, "name", type(sink).__name__) for sink in root.sinks()]
        assert names[0] != names[-1] and len(names) == 4  # dead letters, raw events, aggregates, counts
    finally:
        root.count_store().close()
        root.dead_letters().close()
        inject.clear()


def test_sources_say_whether_they_end(tmp_path: Path) -> None:
    root = Components(load_settings().with_overrides(data_dir=tmp_path))
    events = tmp_path / "in.csv"
    events.write_text("customer_id,event_type,transaction_id,timestamp\n")
    assert root.file_source(events).bounded
    assert root.random_source(seed=1, count=10, rate=None).bounded
    assert not root.random_source(seed=1, count=None, rate=None).bounded
    assert root.file_source(events).damage is None


def test_an_unknown_adapter_option_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        open_writer(f"spool:{tmp_path}", max_pendnig=1)
    with pytest.raises(TypeError):
        open_reader(f"spool:{tmp_path}", pol_interval=0.1)


def test_a_local_root_never_imports_boto3(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from config.bindings import configure\n"
        "from config.settings import load_settings\n"
        f"root = configure(load_settings().with_overrides(data_dir=Path({str(tmp_path)!r})))\n"
        "root.sinks(); root.writer('spool:' + str(root.settings.data_dir / 'spool')).close()\n"
        "assert 'boto3' not in sys.modules, 'boto3 imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
