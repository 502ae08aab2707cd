"""Training: settings and result (`config`), what a run is built from (`setup`: DDP,
loaders, model, optimizer), the loop (`loop.train`), its console lines and bar (`report`),
calibration after it (`calibrate`), classical heads on frozen features (`head_fit`,
`heads`, `svm`), the learning-rate range test (`lr_find`) and the run directory it writes
(`run_writer`). Nothing is imported here: `config` must load without PyTorch."""
