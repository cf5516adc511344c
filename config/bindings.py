"""`inject` bindings: the one place that chooses adapters for the ports.

`configure(settings)` binds each port to the adapter of `settings.backend`.
Code elsewhere asks for a port (`inject.instance(CountStore)`) and never
knows which backend answers.
"""

from __future__ import annotations

import importlib
from typing import Callable

import inject

from config.settings import Settings
from consumers.dead_letter_file import DeadLetterFile
from consumers.local_object_store import LocalObjectStore
from consumers.ports import CountStore, DeadLetterSink, ObjectStore
from consumers.sqlite_count_store import SqliteCountStore


def local_bindings(settings: Settings) -> Callable[[inject.Binder], None]:
    def bind(binder: inject.Binder) -> None:
        binder.bind(Settings, settings)
        binder.bind_to_constructor(CountStore, lambda: SqliteCountStore(settings.count_db))
        binder.bind_to_constructor(ObjectStore, lambda: LocalObjectStore(settings.store_dir))
        binder.bind_to_constructor(
            DeadLetterSink, lambda: DeadLetterFile(settings.dead_letter_path, settings.dead_letter_max_record_bytes)
        )

    return bind


# Backends other than local live in their own module with a `bindings(settings)`
# function, imported only when chosen, so local mode never imports boto3.
BACKEND_MODULES = {"aws": "config.aws_bindings"}


def bindings_for(settings: Settings) -> Callable[[inject.Binder], None]:
    if settings.backend == "local":
        return local_bindings(settings)
    module = importlib.import_module(BACKEND_MODULES[settings.backend])
    return module.bindings(settings)


def configure(settings: Settings) -> None:
    inject.clear_and_configure(bindings_for(settings), allow_override=True)
