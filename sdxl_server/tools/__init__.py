"""Commands around the server: the benchmark, the load test and the model check. They may
import any layer."""
