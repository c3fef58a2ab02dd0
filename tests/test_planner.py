"""The reconcile plan: unit cases and the safety invariants as properties."""

from __future__ import annotations

import dataclasses
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.models import (
    FileRecord,
    FileState,
    FolderState,
    ImageOrigin,
    ImageRecord,
    LocalFile,
    RemoteImage,
    Skip,
    UploadIntent,
)
from syncd.planner import (
    AccountView,
    Deletion,
    Policy,
    claim_intents,
    confirm_deletions,
    plan_account,
)

ACC = "123"
NOW = 1_000_000.0
POLICY = Policy(delete_grace_seconds=600, max_delete_fraction=0.25)


def local(path: str, md5: str, size: int = 10, mtime: int = 1) -> LocalFile:
    return LocalFile(path, size, mtime, md5)


def image(
    md5: str,
    h: str | None = None,
    *,
    gone: float | None = None,
    origin: ImageOrigin = ImageOrigin.UPLOADED,
) -> ImageRecord:
    return ImageRecord(ACC, h or f"h-{md5}", md5, origin, 0.0, gone_since=gone, name=f"{md5}.jpg")


def synced(f: LocalFile, h: str) -> FileRecord:
    return FileRecord(ACC, f.path, f.size, f.mtime_ns, f.md5, FileState.SYNCED, h)


def view(**kw: object) -> AccountView:
    base: dict[str, object] = {
        "account": ACC,
        "folder_state": FolderState.OK,
        "local": [],
        "files": {},
        "images": [],
        "now": NOW,
    }
    base.update(kw)
    return AccountView(**base)  # type: ignore[arg-type]


def test_new_files_are_uploaded_once_per_content() -> None:
    files = [local("a.jpg", "m1"), local("sub/b.jpg", "m1"), local("c.png", "m2")]
    plan = plan_account(view(local=files), POLICY)
    assert sorted(u.md5 for u in plan.uploads) == ["m1", "m2"]
    dup = next(u for u in plan.uploads if u.md5 == "m1")
    assert [f.path for f in dup.files] == ["a.jpg", "sub/b.jpg"]
    assert dup.name == "a.jpg"


def test_second_run_plans_nothing() -> None:
    f = local("a.jpg", "m1")
    plan = plan_account(
        view(local=[f], files={"a.jpg": synced(f, "h-m1")}, images=[image("m1")]), POLICY
    )
    assert plan.uploads == []
    assert plan.link == []
    assert plan.deletions == []
    assert plan.forget == []
    assert plan.start_grace == []


def test_rename_links_and_forgets_without_upload_or_delete() -> None:
    old = local("old.jpg", "m1")
    new = local("dir/new.jpg", "m1")
    plan = plan_account(
        view(local=[new], files={"old.jpg": synced(old, "h-m1")}, images=[image("m1")]), POLICY
    )
    assert plan.uploads == []
    assert plan.deletions == []
    assert plan.start_grace == []
    assert [r.path for r in plan.link] == ["dir/new.jpg"]
    assert plan.link[0].remote_hash == "h-m1"
    assert plan.forget == ["old.jpg"]


def test_removed_file_starts_grace_then_is_due() -> None:
    plan = plan_account(
        view(
            images=[image("m1"), *(image(f"k{i}") for i in range(4))],
            local=[local(f"k{i}.jpg", f"k{i}") for i in range(4)],
        ),
        POLICY,
    )
    assert plan.start_grace == ["m1"]
    assert plan.deletions == []
    assert plan.waiting == [("h-m1", 600.0)]
    later = view(
        images=[image("m1", gone=NOW - 601), *(image(f"k{i}") for i in range(4))],
        local=[local(f"k{i}.jpg", f"k{i}") for i in range(4)],
    )
    due = plan_account(later, POLICY)
    assert [d.hash for d in due.deletions] == ["h-m1"]
    assert due.guard is None


def test_zero_grace_deletes_in_the_same_run() -> None:
    policy = Policy(delete_grace_seconds=0, max_delete_fraction=1.0)
    plan = plan_account(view(images=[image("m1")], local=[local("x.jpg", "m2")]), policy)
    assert [d.hash for d in plan.deletions] == ["h-m1"]


def test_content_back_within_grace_cancels() -> None:
    f = local("a.jpg", "m1")
    plan = plan_account(view(local=[f], images=[image("m1", gone=NOW - 5)]), POLICY)
    assert plan.cancel_grace == ["m1"]
    assert plan.deletions == []


def test_adopted_images_are_never_deleted() -> None:
    policy = Policy(delete_grace_seconds=0, max_delete_fraction=1.0)
    plan = plan_account(
        view(images=[image("m1", origin=ImageOrigin.ADOPTED)], local=[local("b.jpg", "m2")]),
        policy,
    )
    assert plan.deletions == []
    assert plan.kept == [("h-m1", "not uploaded by syncd (adopted)")]


def test_missing_folder_plans_nothing_at_all() -> None:
    plan = plan_account(
        view(folder_state=FolderState.MISSING, images=[image("m1", gone=0.0)]), POLICY
    )
    assert plan.guard == "folder missing"
    assert plan.deletions == []
    assert plan.forget == []
    assert plan.start_grace == []


def test_empty_folder_looks_unmounted_unless_allowed() -> None:
    policy = Policy(delete_grace_seconds=0, max_delete_fraction=1.0)
    images = [image("m1"), image("m2")]
    plan = plan_account(view(images=images), policy)
    assert plan.deletions == []
    assert plan.guard == "folder is empty (looks unmounted)"
    allowed = Policy(delete_grace_seconds=0, max_delete_fraction=1.0, allow_mass_delete=True)
    assert len(plan_account(view(images=images), allowed).deletions) == 2


def test_fraction_guard() -> None:
    policy = Policy(delete_grace_seconds=0, max_delete_fraction=0.25)
    images = [image(f"m{i}") for i in range(8)]
    keep = [local(f"f{i}.jpg", f"m{i}") for i in range(6)]  # 2 of 8 gone: 0.25, allowed
    assert len(plan_account(view(images=images, local=keep), policy).deletions) == 2
    fewer = keep[:5]  # 3 of 8 gone: over the fraction
    plan = plan_account(view(images=images, local=fewer), policy)
    assert plan.deletions == []
    assert plan.guard is not None
    assert "3 of 8" in plan.guard


def test_fraction_guard_counts_images_still_in_their_grace() -> None:
    """A removal seen in two moments: its first part comes due while the rest still waits.
    Each part is under the fraction, the whole is over it: nothing is deleted."""
    policy = Policy(delete_grace_seconds=60, max_delete_fraction=0.25)
    images = [image(f"m{i}", gone=0.0 if i < 2 else None) for i in range(8)]
    images[2] = image("m2", gone=30.0)  # gone 30 s after the first two
    keep = [local(f"f{i}.jpg", f"m{i}") for i in range(3, 8)]
    plan = plan_account(view(images=images, local=keep, now=61.0), policy)
    assert [h for h, _ in plan.waiting] == ["h-m2"]
    assert plan.deletions == []
    assert plan.guard == (
        "would delete 3 of 8 images (1 of them still in their grace period), "
        "more than max_delete_fraction=0.25"
    )
    # The same two due with nothing else on its way is within the fraction.
    images[2] = image("m2")
    keep.append(local("f2.jpg", "m2"))
    plan = plan_account(view(images=images, local=keep, now=61.0), policy)
    assert [d.hash for d in plan.deletions] == ["h-m0", "h-m1"]
    assert plan.guard is None


def test_incomplete_scan_deletes_and_forgets_nothing() -> None:
    policy = Policy(delete_grace_seconds=0, max_delete_fraction=1.0)
    f = local("a.jpg", "m1")
    plan = plan_account(
        view(
            images=[image("m1"), image("m2")],
            local=[local("b.jpg", "m3")],
            files={"a.jpg": synced(f, "h-m1")},
            scan_complete=False,
        ),
        policy,
    )
    assert plan.deletions == []
    assert plan.forget == []
    assert plan.start_grace == []
    assert plan.guard == "part of the folder could not be read"


def test_unsure_paths_keep_their_content_held() -> None:
    policy = Policy(delete_grace_seconds=0, max_delete_fraction=1.0)
    f = local("busy.jpg", "m1")
    plan = plan_account(
        view(
            images=[image("m1")],
            files={"busy.jpg": synced(f, "h-m1")},
            unsure=["busy.jpg"],
            local=[local("other.jpg", "m9")],
        ),
        policy,
    )
    assert plan.deletions == []
    assert plan.forget == []


def test_failed_file_not_retried_until_it_changes() -> None:
    f = local("bad.jpg", "m1")
    failed = FileRecord(ACC, "bad.jpg", 10, 1, "m1", FileState.FAILED, None, "bad image")
    plan = plan_account(view(local=[f], files={"bad.jpg": failed}), POLICY)
    assert plan.uploads == []
    assert plan.unchanged_failures == ["bad.jpg"]
    changed = local("bad.jpg", "m2", mtime=2)
    assert len(plan_account(view(local=[changed], files={"bad.jpg": failed}), POLICY).uploads) == 1


def test_pending_after_transient_failure_is_retried() -> None:
    f = local("a.jpg", "m1")
    pending = FileRecord(ACC, "a.jpg", 10, 1, "m1", FileState.PENDING, None, "timeout")
    assert len(plan_account(view(local=[f], files={"a.jpg": pending}), POLICY).uploads) == 1


def test_stale_image_is_reuploaded() -> None:
    f = local("a.jpg", "m1")
    plan = plan_account(
        view(
            local=[f],
            files={"a.jpg": synced(f, "h-m1")},
            images=[image("m1")],
            remote={},
        ),
        POLICY,
    )
    assert plan.stale == ["m1"]
    assert [u.md5 for u in plan.uploads] == ["m1"]


def test_upload_marked_adopt_when_remote_has_that_name() -> None:
    remote = {"hx": RemoteImage("hx", name="a.jpg")}
    plan = plan_account(view(local=[local("a.jpg", "m1")], remote=remote), POLICY)
    assert plan.uploads[0].adopt is True


def test_skips_recorded_once() -> None:
    skip = Skip("notes.txt", "not an image extension (.txt)")
    plan = plan_account(view(skips=[skip]), POLICY)
    assert [r.path for r in plan.record] == ["notes.txt"]
    row = plan.record[0]
    again = plan_account(view(skips=[skip], files={"notes.txt": row}), POLICY)
    assert again.record == []


def test_confirm_deletions_splits_by_fresh_state() -> None:
    due = [Deletion(h, (h,), "", 0.0) for h in ("a", "b", "c", "d")]
    fresh = {
        "a": RemoteImage("a"),
        "b": RemoteImage("b", creatives=("c1",)),
        "c": RemoteImage("c", status="DELETED"),
        "d": RemoteImage("d", in_adgroups=True),
    }
    delete, in_use, gone = confirm_deletions(due, fresh)
    assert [d.hash for d in delete] == ["a"]
    assert [d.hash for d in in_use] == ["b", "d"]
    assert [d.hash for d in gone] == ["c"]


def test_claim_intents() -> None:
    started = 1_700_000_000.0
    held = UploadIntent(ACC, "m1", "a.jpg", "a.jpg", started)
    orphan = UploadIntent(ACC, "m2", "b.jpg", "b.jpg", started)
    unknown = UploadIntent(ACC, "m3", "c.jpg", "c.jpg", started)
    # Named as the upload, but created two days after it began: a colleague's banner.jpg.
    later = UploadIntent(ACC, "m4", "banner.jpg", "banner.jpg", started)
    remote = {
        "hb": RemoteImage("hb", name="b.jpg", created_time="2023-11-14T22:14:00+0000"),
        "old": RemoteImage("old", name="c.jpg", created_time="2020-01-01T00:00:00+0000"),
        "hd": RemoteImage("hd", name="banner.jpg", created_time="2023-11-16T22:14:00+0000"),
    }
    claimed, dropped = claim_intents([held, orphan, unknown, later], {"m1"}, remote, set())
    assert [(i.md5, img.hash) for i, img in claimed] == [("m2", "hb")]
    assert dropped == [unknown, later]


# -- properties ----------------------------------------------------------------------------

md5s = st.sampled_from([f"m{i}" for i in range(8)])
paths = st.sampled_from([f"d{i % 3}/f{i}.jpg" for i in range(12)])


@st.composite
def views(draw: st.DrawFn) -> AccountView:
    local_files = {p: local(p, draw(md5s)) for p in draw(st.lists(paths, max_size=10))}
    images = []
    for md5 in draw(st.lists(md5s, unique=True, max_size=8)):
        images.append(
            ImageRecord(
                ACC,
                draw(st.sampled_from(["h1", "h2", "h3", f"h-{md5}"])),
                md5,
                draw(st.sampled_from(list(ImageOrigin))),
                0.0,
                gone_since=draw(st.none() | st.floats(NOW - 2000, NOW)),
            )
        )
    files = {
        p: FileRecord(ACC, p, 10, 1, draw(md5s), draw(st.sampled_from(list(FileState))))
        for p in draw(st.lists(paths, max_size=6))
    }
    remote = draw(
        st.none()
        | st.dictionaries(
            st.sampled_from(["h1", "h2", "h3", "hx"]),
            st.builds(
                RemoteImage, st.sampled_from(["h1"]), status=st.sampled_from(["ACTIVE", "DELETED"])
            ),
        )
    )
    return view(
        folder_state=draw(st.sampled_from(list(FolderState))),
        local=list(local_files.values()),
        files=files,
        images=images,
        unsure=draw(st.lists(paths, max_size=3)),
        scan_complete=draw(st.booleans()),
        remote=remote,
    )


policies = st.builds(
    Policy,
    delete_grace_seconds=st.sampled_from([0.0, 1.0, 600.0]),
    max_delete_fraction=st.floats(0.01, 1.0),
    allow_mass_delete=st.booleans(),
)


@settings(max_examples=400, deadline=None)
@given(views(), policies)
def test_never_deletes_a_hash_any_local_content_maps_to(v: AccountView, policy: Policy) -> None:
    plan = plan_account(v, policy)
    held = {f.md5 for f in v.local} | {
        r.md5 for p in v.unsure if (r := v.files.get(p)) is not None and r.md5
    }
    held_hashes = {img.hash for img in v.images if img.md5 in held}
    for d in plan.deletions:
        assert d.hash not in held_hashes
        assert not set(d.md5s) & held


@settings(max_examples=400, deadline=None)
@given(views(), policies)
def test_only_deletes_images_syncd_uploaded(v: AccountView, policy: Policy) -> None:
    plan = plan_account(v, policy)
    origins: dict[str, set[ImageOrigin]] = {}
    for img in v.images:
        origins.setdefault(img.hash, set()).add(img.origin)
    for d in plan.deletions:
        assert origins[d.hash] == {ImageOrigin.UPLOADED}


@settings(max_examples=400, deadline=None)
@given(views(), policies)
def test_guard_holds_for_any_input(v: AccountView, policy: Policy) -> None:
    plan = plan_account(v, policy)
    if v.folder_state is not FolderState.OK or not v.scan_complete:
        assert plan.deletions == []
    if not policy.allow_mass_delete and plan.deletions:
        uploaded = {i.hash for i in v.images} - {
            i.hash for i in v.images if i.origin is not ImageOrigin.UPLOADED
        }
        assert len(plan.deletions) <= policy.max_delete_fraction * len(uploaded)
        assert v.local or v.skips or v.unsure


@settings(max_examples=400, deadline=None)
@given(views(), policies)
def test_deletions_respect_grace(v: AccountView, policy: Policy) -> None:
    for d in plan_account(v, policy).deletions:
        assert v.now - d.gone_since >= policy.delete_grace_seconds


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.booleans(), st.booleans()), max_size=6))
def test_never_deletes_an_image_a_creative_uses(rows: list[tuple[str, bool, bool]]) -> None:
    due = [Deletion(h, (h,), "", 0.0) for h, _, _ in rows]
    fresh = {h: RemoteImage(h, creatives=("c",) if c else (), in_adgroups=a) for h, c, a in rows}
    delete, _, _ = confirm_deletions(due, fresh)
    assert all(not fresh[d.hash].in_use for d in delete)


def test_image_recorded_after_the_listing_began_is_not_stale() -> None:
    f = local("a.jpg", "m1")
    racing = ImageRecord(ACC, "h-m1", "m1", ImageOrigin.UPLOADED, NOW - 1)
    plan = plan_account(view(local=[f], images=[racing], remote={}, remote_as_of=NOW - 5), POLICY)
    assert plan.stale == []
    assert plan.uploads == []
    older = ImageRecord(ACC, "h-m1", "m1", ImageOrigin.UPLOADED, NOW - 10)
    stale = plan_account(view(local=[f], images=[older], remote={}, remote_as_of=NOW - 5), POLICY)
    assert stale.stale == ["m1"]


@settings(max_examples=300, deadline=None)
@given(views(), policies, st.randoms(use_true_random=False))
def test_the_plan_does_not_depend_on_input_order(
    v: AccountView, policy: Policy, rnd: random.Random
) -> None:
    """Scandir order and row order vary; the plan (order included) must not."""
    local, images = list(v.local), list(v.images)
    rnd.shuffle(local)
    rnd.shuffle(images)
    files = dict(rnd.sample(list(v.files.items()), len(v.files)))
    shuffled = dataclasses.replace(v, local=local, images=images, files=files)
    assert plan_account(shuffled, policy) == plan_account(v, policy)
