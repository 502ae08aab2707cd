"""The first room of the flow: images in, model input out. Decoding (`images`), label files
and data sets (`label_files`, `datasets`), the evaluation transform (`preprocess`), training
augmentation (`augment`), decoding ahead of the model (`prefetch`) and the lists of inputs a
command is given (`sources`)."""
