"""Jobs: their spec, state, folders and registry."""
