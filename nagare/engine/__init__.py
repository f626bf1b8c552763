"""The run engine's decisions: pure functions of plain data (and `now`), tested in
milliseconds; the scheduler, the pools and the cluster coordinator apply them as compare-and-set
transitions in the store.

- `new_run`: how a new run looks (its id, its task instances, a map's children).
- `next_steps`: what happens next in a run, and when it ends with which status.
- `assignment`: what one attempt runs (command, environment) and what a map fans out over.
- `attempt_end`: how an attempt's outcome becomes its task's next state (retry, fail, requeue).
- `expressions`: jq (its only user): `{{ … }}` templates, `when:` conditions, webhook extraction.
- `context`: a task's context, its upstream outputs as variables, the assignment that uses them.
- `outputs`: what an attempt publishes through `$NAGARE_OUTPUT` and `output: NAME`.
"""
