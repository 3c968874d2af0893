"""The run infrastructure around the loop, in `transformers.Trainer`'s idioms: callbacks and state, checkpoints
that resume bit-identically, the output directory's lock and files, and trackers."""
