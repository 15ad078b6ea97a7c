"""The chunk cache of live files: chunks, read-ahead, write-back, recycled buffers."""
