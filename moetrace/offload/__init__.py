"""Running a model with its routed experts in host memory and a policy-driven device cache."""
