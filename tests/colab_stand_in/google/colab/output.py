"""`output.register_callback` as colab.ipynb's review cell calls it. In Colab the page's script
calls a registered function through `google.colab.kernel.invokeFunction`; here the rehearsal
calls it from a cell of its own (`call`), as the page's "Save to Drive" button would."""

from __future__ import annotations

_callbacks: dict = {}


def register_callback(name: str, callback) -> None:
    _callbacks[name] = callback


def call(name: str, *args):
    """What the frontend does when the page invokes `name`: the kernel-side function runs."""
    return _callbacks[name](*args)
