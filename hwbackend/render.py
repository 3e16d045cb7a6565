"""The one renderer of the package-data templates (hwbackend/templates/): Verilog and C come from files
with named slots, never from strings inside classes (the hls4ml way)."""

from __future__ import annotations

import functools

SPEC_VERSION = "1.0"


@functools.lru_cache(maxsize=1)
def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("quweit.hwbackend", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render(template: str, **slots: object) -> str:
    """Fill `templates/<template>` with `slots` (a missing slot is an error, never an empty string)."""
    return _environment().get_template(template).render(spec_version=SPEC_VERSION, **slots)
