"""Model definitions: the MAE autoencoder and the ViT classifiers built on its encoder."""
