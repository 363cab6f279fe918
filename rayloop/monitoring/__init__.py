"""The data plane of monitoring: drift statistics, the inference log, the policy, the retrain
state machine and the monitor's logic, with no Ray import at module level. The Ray actor that
runs them is `rayloop.control.monitor_actor`."""
