"""Translation function for user-visible strings, usable inside and outside the Slicer application.

``slicer.i18n.tr`` derives the translation context from its caller's file, so it is re-exported
unchanged (a wrapper would put every string into this file's context).  Headless ``slicer-core``
has no ``slicer.i18n``; there strings pass through untranslated.
"""
from __future__ import annotations

try:
    from slicer.i18n import tr
except ImportError:  # slicer-core outside the application

    def tr(text: str) -> str:
        """Return ``text`` unchanged (no translations outside the Slicer application)."""
        return text


__all__ = ["tr"]
