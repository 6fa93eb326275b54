"""Robot episodes: one dataset schema (:mod:`.schema`), actions from states (:mod:`.actions`), and the
readers that convert DROID (:mod:`.droid`) and LeRobot (:mod:`.lerobot`) datasets into it (docs/posttrain.md)."""
