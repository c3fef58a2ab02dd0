"""RemoteListing reads like the dict of RemoteImage it replaces, whatever was listed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from syncd.models import RemoteImage, RemoteListing

HASHES = st.sampled_from(["h1", "h2", "h3", "h4"])
IMAGES = st.builds(
    RemoteImage,
    hash=HASHES,
    name=st.sampled_from(["", "a.jpg"]),
    status=st.sampled_from(["ACTIVE", "DELETED", "INTERNAL"]),
    creatives=st.sampled_from([(), ("c1",)]),
    in_adgroups=st.booleans(),
    created_time=st.sampled_from(["", "2026-01-01T00:00:00+0000"]),
    uncertain=st.booleans(),
)


@given(pages=st.lists(st.lists(IMAGES, max_size=6), max_size=4), probe=HASHES)
def test_a_listing_reads_as_the_dict_would(pages: list[list[RemoteImage]], probe: str) -> None:
    listing = RemoteListing()
    expected: dict[str, RemoteImage] = {}
    for page in pages:
        listing.update(page)
        expected.update((img.hash, img) for img in page)
    assert dict(listing) == expected
    assert len(listing) == len(expected)
    assert set(listing) == set(expected)
    assert (probe in listing) == (probe in expected)
    assert listing.get(probe) == expected.get(probe)
    assert listing.status(probe) == (expected[probe].status if probe in expected else None)
    assert sorted(listing.values(), key=_hash) == sorted(expected.values(), key=_hash)
    assert sorted(listing.items()) == sorted(expected.items())


def _hash(img: RemoteImage) -> str:
    return img.hash


def test_a_plain_entry_is_held_as_its_status() -> None:
    # The point of the type: 100,000 plain entries hold no RemoteImage each.
    listing = RemoteListing([RemoteImage("h1", status="ACTIVE"), RemoteImage("h2", name="n")])
    assert listing["h1"] == RemoteImage("h1")
    assert listing["h1"] is not listing["h1"]  # built on lookup, not held
    assert listing["h2"] is listing["h2"]  # held whole: it has a name
