"""scripts/soak: hours of mixed use of a sheepfs mount under faults, every byte checked.

The modules, each with one job: ``options`` (the command line), ``content`` (what the
workload writes), ``model`` (what every file may hold), ``judge`` (a VDI against the model),
``report`` (counters, the last line, the exit code), ``runner`` (every command with a
deadline), ``target`` (the throwaway cluster or the fake dog), ``daemon`` (the sheepfs
mount and its spool disk), ``proxy`` (a TCP proxy that can hold a sheep's replies),
``faults`` (what is injected, and when), ``ops`` and ``ops_more`` (the workload),
``ext4`` (a file system on one file), ``checker`` (verification against the cluster),
``main`` (the run from start to end).
"""
