"""The emulator's paging window against a plain reference: sort, filter, slice (pure, no HTTP).

The window walks about one page per request instead of the whole account; these properties
say it still gives exactly what the simple definition gives, cursors and links included.
"""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.emulator.images import ImageInfo
from syncd.emulator.listing import _decode_cursor, _encode_cursor, _filter, _window
from syncd.emulator.nodes import ACTIVE, DELETED, StoredImage

NOW = datetime(2026, 11, 22, tzinfo=UTC)


def _images(statuses: list[bool], widths: list[int]) -> list[StoredImage]:
    info = [ImageInfo("png", w, 10) for w in widths]
    return [
        StoredImage(
            "1", f"h{i}", f"n{i % 3}", b"", info[i], i + 1, NOW, NOW, DELETED if d else ACTIVE
        )
        for i, d in enumerate(statuses)
    ]


def _reference(
    order: list[StoredImage], query: dict[str, str], limit: int
) -> tuple[list[StoredImage], bool, bool]:
    keep = _filter(query)
    matching = [i for i in sorted(order, key=lambda i: -i.seq) if keep(i)]
    if "after" in query:
        after = _decode_cursor(query["after"])
        page = [i for i in matching if i.seq < after][:limit]
    elif "before" in query:
        before = _decode_cursor(query["before"])
        page = [i for i in matching if i.seq > before][-limit:]
    else:
        page = matching[:limit]
    if not page:
        return page, False, False
    return page, matching[0].seq > page[0].seq, matching[-1].seq < page[-1].seq


images = st.lists(st.booleans(), max_size=40).flatmap(
    lambda deleted: st.tuples(
        st.just(deleted),
        st.lists(st.sampled_from([5, 50]), min_size=len(deleted), max_size=len(deleted)),
    )
)
queries = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["n0", "n1"]),
        "minwidth": st.sampled_from(["10"]),
        "hashes": st.lists(st.sampled_from([f"h{i}" for i in range(45)]), max_size=8).map(
            lambda hs: "[" + ",".join(f'"{h}"' for h in hs) + "]"
        ),
    },
)


@settings(max_examples=300, deadline=None)
@given(
    images,
    queries,
    st.integers(1, 6),
    st.sampled_from([None, "after", "before"]),
    st.integers(0, 42),
)
def test_window_matches_the_reference(
    built: tuple[list[bool], list[int]],
    query: dict[str, str],
    limit: int,
    cursor: str | None,
    seq: int,
) -> None:
    order = _images(*built)
    if cursor is not None:
        query = {**query, cursor: _encode_cursor(seq)}
    assert _window(order, _filter(query), limit, query) == _reference(order, query, limit)


def test_a_walk_sees_every_image_once_while_others_come_and_go() -> None:
    order = _images([False] * 30, [50] * 30)
    seen: list[str] = []
    query: dict[str, str] = {}
    while True:
        page, _, older = _window(order, _filter(query), 4, query)
        seen += [i.hash for i in page]
        order[0].status = DELETED if order[0].status == ACTIVE else ACTIVE  # churn meanwhile
        order.append(_images([False] * (len(order) + 1), [50] * (len(order) + 1))[-1])
        if not older:
            break
        query = {"after": _encode_cursor(page[-1].seq)}
    stayed = [f"h{i}" for i in range(29, 0, -1)]  # present throughout: all but h0 and new ones
    assert [h for h in seen if h in stayed] == stayed
