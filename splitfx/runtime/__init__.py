"""Runtime layer: what a finished plan runs as (:class:`SplitModule`)."""
