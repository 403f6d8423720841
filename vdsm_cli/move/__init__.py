"""vdsClient moveDisk: live storage migration of a running VM's disk, driven through the API.

The modules, by role: ``command`` (the command line and its run, one disk or all), ``plan``
(the pre-flight and the plan), ``steps`` (the step names, their order and titles),
``context`` (the state the steps share and how a step runs), ``forward`` and ``rollback``
(the steps' actions), ``driver`` (one move to its end, and recovery from wherever it
stopped), ``hosts`` (which host is the SPM and which runs the VM, and finding the SPM again
after a failover), ``journal`` (the persisted state), ``progress`` (what the user sees) and
``fault`` (the test-only fault hook).
"""
