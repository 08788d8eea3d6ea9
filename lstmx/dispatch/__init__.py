"""Which implementation runs each part of the work: the registry, the plan, the precision."""
