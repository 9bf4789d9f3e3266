"""Training with recording (`record --train`), above `models/` and `trace/`; the demo model's builder
(`moetrace.demo.build`) sits above it."""
