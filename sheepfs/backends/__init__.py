"""Storage backends: where VDIs live (the dog/collie CLI, or a local directory)."""
