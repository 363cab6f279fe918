"""The data plane of serving: what runs inside a Serve replica (validation, batching, backends,
the hand-off to the monitor) and the app's typed arguments. Never imports `rayloop.control`."""
