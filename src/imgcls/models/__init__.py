"""Networks and what describes them: the architecture registry (`registry`, with `alexnet`
and `simple_cnn`), weight files (`weights`), reading a run directory (`run_dir`) and class
labels (`labels`)."""
