"""NEW_VDI (create, clone, snapshot, rollback), DEL_VDI and GET_VDI_ATTR on the server,
ported from ``sheep/vdi.c``. Functions that may wait (the snapshot race window) are
generators yielding the seconds to sleep; the rest are plain functions."""

from __future__ import annotations

import logging
import struct
from collections.abc import Generator

from . import inode as ino
from .lookup import VdiInfo, VdiIocb, vdi_lookup
from .proto import (
    ATTR_OBJ_SIZE,
    GREF_OFFSET,
    INODE_HEADER_SIZE,
    INODE_SIZE,
    U32,
    VDI_BTREE_BIT,
    Res,
    cstr,
    hash_vdi_attr,
    vid_to_attr_oid,
    vid_to_data_oid,
    vid_to_vdi_oid,
)
from .sparse import PAGE, SparseImage
from .state import ClusterState, WouldCrash

log = logging.getLogger(__name__)
Waiting = Generator[float, None, int]


def nonzero_index(img: SparseImage) -> list[tuple[int, int]]:
    """(i, data_vdi_id[i]) for every non-zero u32 of the 4 MiB index area."""
    out: list[tuple[int, int]] = []
    first_page, last_page = INODE_HEADER_SIZE // PAGE, (GREF_OFFSET - 1) // PAGE
    for p in sorted(k for k in img.pages if first_page <= k <= last_page):
        lo, hi = max(p * PAGE, INODE_HEADER_SIZE), min((p + 1) * PAGE, GREF_OFFSET)
        a, b = (lo - INODE_HEADER_SIZE) // 4, (hi - INODE_HEADER_SIZE) // 4
        vids = struct.unpack(f"<{b - a}I", img.read(INODE_HEADER_SIZE + 4 * a, 4 * (b - a)))
        out += [(a + k, v) for k, v in enumerate(vids) if v]
    return out


def notify_vdi_add(
    st: ClusterState, new_vid: int, copies: int, old_vid: int, policy: int, shift: int
) -> None:
    """``cluster_notify_vdi_add``: the previous VDI becomes a (read-only) snapshot."""
    if old_vid:
        st.vdis.add_state(
            old_vid, st.copies_of(old_vid), True, policy, st.shift_of(old_vid), 0, st.recycle_vid
        )
    st.vdis.add_state(new_vid, copies, False, policy, shift, old_vid, st.recycle_vid)


def alloc_inode(
    st: ClusterState, iocb: VdiIocb, snapid: int, new_vid: int, base: SparseImage | None
) -> SparseImage:
    img = ino.new_inode_image()
    hdr = ino.InodeHeader(
        cstr(iocb.name[:255]),
        b"",
        iocb.time,
        0,
        0,
        iocb.size,
        0,
        iocb.copy_policy,
        iocb.store_policy,
        iocb.nr_copies,
        iocb.block_size_shift,
        snapid,
        new_vid,
        iocb.base_vid,
        0,
    )
    if base is not None:
        _copy_vdis(st, base, img, hdr, iocb)
        for i, _ in nonzero_index(base):
            gen, _count = ino.get_grefs(base, i, 1)[0]
            ino.set_gref(img, i, gen + 1, 0)
    elif iocb.store_policy:
        ino.init_btree_root(img)
    ino.set_header(img, hdr)
    return img


def _copy_vdis(
    st: ClusterState, base: SparseImage, img: SparseImage, hdr: ino.InodeHeader, iocb: VdiIocb
) -> None:
    """``sd_inode_copy_vdis``: the whole index; a depth-2 B-tree gets copies of its leaves."""
    for p, buf in base.pages.items():
        lo, hi = p * PAGE, (p + 1) * PAGE
        if hi > INODE_HEADER_SIZE and lo < GREF_OFFSET:
            a, b = max(lo, INODE_HEADER_SIZE), min(hi, GREF_OFFSET)
            img.write(a, bytes(buf[a - lo : b - lo]))
    magic, depth, entries = ino.btree_root(base)
    if iocb.store_policy != 1 or depth <= 1:
        return
    root = base.read(INODE_HEADER_SIZE, 8 + 16 * entries)
    for k, (_idx, oid) in enumerate(ino.btree_entries(root, depth, entries)):
        leaf = st.store.get(oid)
        new_oid = hdr.vdi_id << 32 | VDI_BTREE_BIT | hdr.btree_counter
        hdr.btree_counter += 1
        st.store.put(new_oid, leaf.copy() if leaf else SparseImage(4 << 20))
        img.write(INODE_HEADER_SIZE + 8 + 16 * k + 8, struct.pack("<Q", new_oid))


def _inc_counts(img: SparseImage) -> None:
    for i, _ in nonzero_index(img):
        gen, count = ino.get_grefs(img, i, 1)[0]
        ino.set_gref(img, i, gen, count + 1)


def create_vdi(st: ClusterState, iocb: VdiIocb, snapid: int, new_vid: int) -> int:
    st.store.put(vid_to_vdi_oid(new_vid), alloc_inode(st, iocb, snapid, new_vid, None))
    return Res.SUCCESS


def clone_vdi(st: ClusterState, iocb: VdiIocb, snapid: int, new_vid: int, base_vid: int) -> int:
    base = st.store.get(vid_to_vdi_oid(base_vid))
    if base is None:
        return Res.BASE_VDI_READ
    _inc_counts(base)  # sheep writes only the base's gref area back
    st.store.put(vid_to_vdi_oid(new_vid), alloc_inode(st, iocb, snapid, new_vid, base))
    return Res.SUCCESS


def snapshot_vdi(
    st: ClusterState, iocb: VdiIocb, snapid: int, new_vid: int, base_vid: int
) -> Waiting:
    stored = st.store.get(vid_to_vdi_oid(base_vid))
    if stored is None:
        return Res.BASE_VDI_READ
    base = stored.copy()  # "TODO: multiple sd_write_object should be performed atomically"
    base.write(520, struct.pack("<Q", iocb.time))
    _inc_counts(base)
    if st.knobs.snapshot_race > 0:
        yield st.knobs.snapshot_race  # index writes landing now end up in neither inode
    if not st.store.exists(vid_to_vdi_oid(base_vid)):
        return Res.BASE_VDI_WRITE
    st.store.put(vid_to_vdi_oid(base_vid), base)
    st.store.put(vid_to_vdi_oid(new_vid), alloc_inode(st, iocb, snapid, new_vid, base))
    return Res.SUCCESS


def rebase_vdi(
    st: ClusterState, iocb: VdiIocb, snapid: int, new_vid: int, base_vid: int, cur_vid: int
) -> int:
    base = st.store.get(vid_to_vdi_oid(base_vid))
    if base is None:
        return Res.BASE_VDI_READ
    if st.store.write(vid_to_vdi_oid(cur_vid), 520, struct.pack("<Q", iocb.time)) != Res.SUCCESS:
        return Res.VDI_WRITE
    _inc_counts(base)
    st.store.put(vid_to_vdi_oid(new_vid), alloc_inode(st, iocb, snapid, new_vid, base))
    return Res.SUCCESS


def vdi_create(st: ClusterState, iocb: VdiIocb) -> tuple[int, int]:
    """Fresh create (base 0) or clone: (result, new vid)."""
    info = VdiInfo()
    ret = vdi_lookup(st, iocb, info)
    if ret == Res.SUCCESS:
        return Res.VDI_EXIST, 0
    if ret != Res.NO_VDI:
        return ret, 0
    snapid = info.snapid or 1
    new_vid = info.free_bit
    old = info.vid if iocb.base_vid == 0 else iocb.base_vid
    notify_vdi_add(st, new_vid, iocb.nr_copies, old, iocb.copy_policy, iocb.block_size_shift)
    if _gateway_dies(st, new_vid):
        return Res[st.knobs.inodeless_result], new_vid
    if iocb.base_vid == 0:
        return create_vdi(st, iocb, snapid, new_vid), new_vid
    return clone_vdi(st, iocb, snapid, new_vid, iocb.base_vid), new_vid


def _gateway_dies(st: ClusterState, new_vid: int) -> bool:
    """The ``inodeless_new_vdis`` knob: the vid has its state, the inode is never written."""
    if st.knobs.inodeless_new_vdis <= 0:
        return False
    st.knobs.inodeless_new_vdis -= 1
    st.vdis.inuse.add(new_vid)  # as the next node to join marks it
    log.error("new vdi %x: the gateway died before writing its inode", new_vid)
    return True


def vdi_snapshot(st: ClusterState, iocb: VdiIocb) -> Generator[float, None, tuple[int, int]]:
    """Snapshot (base = the working vid) or rollback (any other base): (result, new vid)."""
    info = VdiInfo()
    ret = vdi_lookup(st, iocb, info)
    if ret != Res.SUCCESS:
        return ret, 0
    new_vid = info.free_bit
    notify_vdi_add(st, new_vid, iocb.nr_copies, info.vid, iocb.copy_policy, iocb.block_size_shift)
    if _gateway_dies(st, new_vid):
        return Res[st.knobs.inodeless_result], new_vid
    if iocb.base_vid == info.vid:
        ret = yield from snapshot_vdi(st, iocb, info.snapid, new_vid, iocb.base_vid)
        return ret, new_vid
    return rebase_vdi(st, iocb, info.snapid, new_vid, iocb.base_vid, info.vid), new_vid


def vdi_delete(st: ClusterState, iocb: VdiIocb) -> tuple[int, int]:
    """``vdi_delete`` + ``delete_vdi_work``: (result, vid). SUCCESS whenever the lookup
    succeeds, even when the inode is kept because index entries are left (rule 20)."""
    info = VdiInfo()
    ret = vdi_lookup(st, iocb, info)
    if ret != Res.SUCCESS:
        return ret, 0
    img = st.store.get(vid_to_vdi_oid(info.vid))
    if img is None:
        log.error("cannot find VDI object %x", info.vid)
        return Res.SUCCESS, info.vid
    hdr = ino.header(img)
    if hdr.vdi_size == 0 and hdr.is_deleted:
        return Res.SUCCESS, info.vid
    if hdr.store_policy == 0:
        if any(ino.get_vids(img, 0, min(hdr.count_data_objs(), 1 << 20))):
            log.error("vid: %x still has objects", info.vid)
            return Res.SUCCESS, info.vid
    else:
        _delete_hyper_objects(st, img, hdr)
    if hdr.is_deleted:
        return Res.SUCCESS, info.vid
    if st.knobs.lost_inode_writes > 0:
        st.knobs.lost_inode_writes -= 1
        log.error("deleting vdi %x: the write of its emptied inode was lost", info.vid)
        return Res.SUCCESS, info.vid
    img.zero(INODE_HEADER_SIZE, INODE_SIZE - INODE_HEADER_SIZE)
    img.zero(0, 256)
    img.write(536, bytes(8))
    return Res.SUCCESS, info.vid


def _delete_hyper_objects(st: ClusterState, img: SparseImage, hdr: ino.InodeHeader) -> None:
    """``sd_inode_index_walk`` with ``delete_cb``: removes the objects the volume owns."""
    magic, depth, entries = ino.btree_root(img)
    if depth not in (1, 2):  # traverse_btree: panic("This B-tree not support depth %u")
        raise WouldCrash(
            "hyper-btree",
            f"DEL_VDI of a hyper volume with B-tree depth {depth} (its index was zeroed, rule 7)",
        )
    root = img.read(INODE_HEADER_SIZE, 8 + 16 * entries)
    leaves = [root] if depth == 1 else []
    for _idx, oid in ino.btree_entries(root, depth, entries) if depth == 2 else []:
        node = st.store.get(oid)
        if node is not None:
            raw = node.read(0, 8)
            leaves.append(node.read(0, 8 + 8 * struct.unpack_from("<I", raw, 4)[0]))
    for raw in leaves:
        n = struct.unpack_from("<I", raw, 4)[0]
        for idx, vid in ino.btree_entries(raw, 1, n):
            if vid == hdr.vdi_id:
                st.store.remove(vid_to_data_oid(vid, idx))


def get_vdi_attr(
    st: ClusterState,
    vattr: bytearray,
    data_len: int,
    vid: int,
    ctime: int,
    wr: bool,
    excl: bool,
    delete: bool,
) -> tuple[int, int]:
    """``get_vdi_attr``: (result, attr_id), probing slots from the attribute hash."""
    vattr[512:520] = struct.pack("<Q", ctime)
    attr_id = hash_vdi_attr(bytes(vattr))
    end, ret, cur = (attr_id - 1) & U32, Res.NO_OBJ, b""
    while attr_id != end:
        oid = vid_to_attr_oid(vid, attr_id)
        if excl or not wr:
            ret, cur = st.store.read(oid, 0, ATTR_OBJ_SIZE)
        if ret == Res.NO_OBJ and wr:
            st.store.create_and_write(oid, 0, bytes(vattr[:data_len]), ATTR_OBJ_SIZE)
            return Res.SUCCESS, attr_id
        if ret != Res.SUCCESS:
            return ret, attr_id
        if _same_attr(cur, vattr):
            if excl:
                return Res.VDI_EXIST, attr_id
            if delete:
                st.store.write(oid, 0, b"\0")
            elif wr:
                st.store.write(oid, 0, bytes(vattr[:ATTR_OBJ_SIZE]))
            return Res.SUCCESS, attr_id
        attr_id = (attr_id + 1) & U32
    return Res.FULL_VDI, attr_id


def _same_attr(a: bytes, b: bytearray) -> bool:
    return (
        cstr(a[0:256]) == cstr(bytes(b[0:256]))
        and cstr(a[256:512]) == cstr(bytes(b[256:512]))
        and a[520:524] == bytes(b[520:524])
        and cstr(a[528:784]) == cstr(bytes(b[528:784]))
    )


def restart(st: ClusterState) -> None:
    """The whole cluster stopped and started: each node's ``init_vdi_state`` takes a vid
    for deleted exactly when its inode's name is empty (``sheep/store/plain_store.c``),
    whatever DEL_VDI answered before."""
    for vid in sorted(st.vdis.inuse | st.vdis.deleted):
        img = st.store.get(vid_to_vdi_oid(vid))
        if img is None:  # no inode to take it from: the vid is free again (F24)
            st.vdis.inuse.discard(vid)
            st.vdis.deleted.discard(vid)
            st.vdis.entries.pop(vid, None)
            continue
        gone = ino.header(img).is_deleted
        (st.vdis.deleted.add if gone else st.vdis.deleted.discard)(vid)
        entry = st.vdis.entries.get(vid)
        if entry is not None:
            entry.deleted = gone
