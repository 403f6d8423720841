"""SPM tasks: background storage operations that can be stopped, reverted and recovered.

- :mod:`.state`: one task's state machine and its persisted record, ``task.json``.
- :mod:`.context`: what a storage operation sees of the task that runs it.
- :mod:`.rollback`: running a task's recorded rollback steps, newest first.
- :mod:`.processes`: finding and killing the processes a dead daemon's task left running.
- :mod:`.manager`: the task manager, which runs, stops, reverts and recovers tasks.
"""
