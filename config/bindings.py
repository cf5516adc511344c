"""`inject` bindings: the injector holds the composition root.

`configure(settings)` builds the root (`config.root.Components`) and binds
it, `Settings`, and each store port to the root's own builder, so that
`inject.instance(CountStore)` and `root.count_store()` are the same object.
The CLI entry calls it once per command; nothing but the root and the CLI
entry touches `inject`.

Usage::

    root = configure(settings)
    assert inject.instance(Components) is root
"""

from __future__ import annotations

import inject

from config.root import Components
from config.settings import Settings
from consumers.ports import CountStore, DeadLetterSink, ObjectStore


def configure(settings: Settings) -> Components:
    root = Components(settings)

    def bind(binder: inject.Binder) -> None:
        binder.bind(Settings, settings)
        binder.bind(Components, root)
        binder.bind_to_constructor(CountStore, root.count_store)
        binder.bind_to_constructor(ObjectStore, root.object_store)
        binder.bind_to_constructor(DeadLetterSink, root.dead_letters)

    inject.clear_and_configure(bind, allow_override=True)
    return root
