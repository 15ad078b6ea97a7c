"""The sheep backend: a client of the sheep wire protocol (Sheepdog 1.0), no process per I/O.

``proto`` is the wire format, ``connection`` and ``client`` the pipelined connections,
``inode`` the headers and indexes, ``data`` reads and writes object by object, ``listing``
the VDI list and the cluster's space, ``stream`` read-ahead, ``backend`` the interface.
"""

from __future__ import annotations

from .backend import SheepBackend

__all__ = ["SheepBackend"]
