"""The built-in demo: the demo model's builder (`build`) and the demo job behind `make demo` (`pipeline`).

This package sits above training (`moetrace.train`): building the demo model trains it."""
