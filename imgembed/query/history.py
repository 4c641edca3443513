"""The app's one current query, and the way back to the ones before it.

Whatever asked for it (an upload, a photo picked from the list, a text, "More like this", a click on
the map), the page answers one query at a time; :class:`QueryHistory` holds it and the earlier ones,
so "Back" returns to the previous query, an upload included (its bytes are kept).
"""

from __future__ import annotations

from imgembed.query.search import Query

HISTORY_MAX = 20  # earlier queries kept for "Back"


class QueryHistory:
    """The current query (None: none yet) and up to :data:`HISTORY_MAX` earlier ones."""

    def __init__(self, limit: int = HISTORY_MAX) -> None:
        self.current: Query | None = None
        self._earlier: list[Query | None] = []
        self.limit = limit
        self.version = 0  # changes with every change of query (the page resets its inputs on it)

    def go(self, query: Query | None) -> None:
        """Make ``query`` the current one; the one it replaces is kept for :meth:`back`."""
        if query == self.current:
            return
        if self.current is not None:
            self._earlier = [*self._earlier, self.current][-self.limit:]
        self.current = query
        self.version += 1

    def back(self) -> Query | None:
        """Return to the previous query (None when there was none); the new current one."""
        self.current = self._earlier.pop() if self._earlier else None
        self.version += 1
        return self.current

    @property
    def can_go_back(self) -> bool:
        return bool(self._earlier)

    def previous(self) -> Query | None:
        return self._earlier[-1] if self._earlier else None
