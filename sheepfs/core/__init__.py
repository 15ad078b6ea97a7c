"""The core: the filesystem without FUSE, its open files, uploads and background tasks."""
