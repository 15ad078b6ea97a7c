"""The FUSE side: the adapter that translates requests for the core, and the mount."""
