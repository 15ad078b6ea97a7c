"""VDI lookup and vid allocation, ported line by line from ``sheep/vdi.c``
(``get_vdi_bitmap_range``, ``fill_vdi_info_range``, ``fill_vdi_info``, ``vdi_lookup``)."""

from __future__ import annotations

from dataclasses import dataclass

from . import inode as ino
from .proto import MAX_TAG_LEN, SD_NR_VDIS, Res, sd_hash_vdi, vid_to_vdi_oid
from .state import ClusterState, WouldCrash


@dataclass
class VdiIocb:
    """``struct vdi_iocb``: what a NEW_VDI, GET_VDI_INFO, LOCK or DEL_VDI asks for."""

    name: bytes  # the 256-byte name field as received
    tag: bytes | None = None  # None: a 256-byte payload (no tag pointer)
    snapid: int = 0
    size: int = 0
    base_vid: int = 0
    create_snapshot: bool = False
    copy_policy: int = 0
    store_policy: int = 0
    nr_copies: int = 0
    block_size_shift: int = 0
    time: int = 0


@dataclass
class VdiInfo:
    vid: int = 0
    snapid: int = 0
    free_bit: int = 0
    create_time: int = 0


def get_vdi_bitmap_range(st: ClusterState, name: bytes) -> tuple[int, int, int]:
    """(result, left, right): the run of in-use bits starting at the name's hash."""
    left = sd_hash_vdi(name) or 1  # 0x000000 should be skipped
    right = st.vdis.find_next_zero(left)
    if left == right:
        return Res.NO_VDI, left, right
    if right == SD_NR_VDIS:  # wrap around
        right = st.vdis.find_next_zero(1)
        if right == SD_NR_VDIS:
            return Res.FULL_VDI, left, right
    return Res.SUCCESS, left, right


def vdi_has_tag(iocb: VdiIocb) -> bool:
    return bool((iocb.tag is not None and iocb.tag[:1] not in (b"", b"\0")) or iocb.snapid)


def vdi_tag_match(iocb: VdiIocb, hdr: ino.InodeHeader) -> bool:
    if hdr.tag[:1] != b"\0":
        if iocb.tag is None:  # strncmp(inode->tag, NULL, ...): segfault
            raise WouldCrash(
                "lookup-null-tag",
                "256-byte lookup payload with snapid != 0 met a tagged snapshot (rule 5)",
            )
        if _strncmp_eq(hdr.tag, iocb.tag, MAX_TAG_LEN):
            return True
    return iocb.snapid == hdr.snap_id


def _strncmp_eq(a: bytes, b: bytes, n: int) -> bool:
    a, b = a[:n], b[:n]
    ia, ib = a.find(b"\0"), b.find(b"\0")
    a = a if ia < 0 else a[:ia]
    b = b if ib < 0 else b[:ib]
    return a == b


def fill_vdi_info_range(
    st: ClusterState, left: int, right: int, iocb: VdiIocb, info: VdiInfo
) -> int:
    vdi_found = False
    for i in st.vdis.set_vids_desc(max(left, 1), right):
        img = st.store.get(vid_to_vdi_oid(i))
        if img is None:
            return Res.NO_OBJ
        hdr = ino.header(img)
        if not _strncmp_eq(hdr.name, iocb.name, 256):
            continue
        if vdi_has_tag(iocb):
            if not hdr.is_snapshot:  # read, delete, clone on snapshots
                vdi_found = True
                info.vid = hdr.vdi_id
                continue
            if not vdi_tag_match(iocb, hdr):
                continue
        else:  # rollback & snap create, read, delete on the current working VDI
            info.snapid = hdr.snap_id + 1
            if hdr.is_snapshot:  # the current working VDI is deleted
                info.vid = hdr.vdi_id
                break
        info.create_time = hdr.create_time
        info.vid = hdr.vdi_id
        return Res.SUCCESS
    return Res.NO_TAG if vdi_found else Res.NO_VDI


def fill_vdi_info(st: ClusterState, left: int, right: int, iocb: VdiIocb, info: VdiInfo) -> int:
    """Right to left in the bitmap; a wrapped run is two ranges, the low one first."""
    if left < right:
        return fill_vdi_info_range(st, left, right, iocb, info)
    ret = fill_vdi_info_range(st, 1, right, iocb, info) if 1 < right else Res.NO_VDI
    if ret in (Res.NO_VDI, Res.NO_TAG):
        ret = fill_vdi_info_range(st, left, SD_NR_VDIS, iocb, info)
    return ret


def vdi_lookup(st: ClusterState, iocb: VdiIocb, info: VdiInfo) -> int:
    if not st.recycle_vid:
        ret, left, right = get_vdi_bitmap_range(st, iocb.name)
        info.free_bit = right
        if ret != Res.SUCCESS:
            return ret
        return fill_vdi_info(st, left, right, iocb, info)
    # -R: the vid of a name can be anywhere, so scan the whole bitmap
    info.free_bit = st.vdis.find_next_zero(1)
    ret = fill_vdi_info_range(st, 1, SD_NR_VDIS, iocb, info)
    if ret == Res.NO_VDI and info.vid != 0 and info.vid in st.vdis.inuse:
        return Res.SUCCESS
    return ret
