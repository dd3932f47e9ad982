"""LayerLens's own method, profile -> plan -> build: the candidate sites (sites), their measured utility (profiling),
the plan from layerlens.planning, the plan applied to the model (apply), all driven by LayerLensBaseline (baseline)."""
