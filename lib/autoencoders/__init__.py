"""Learning codes without labels: PCA and logistic PCA (Schein, Saul and Ungar 2003),
restricted Boltzmann machines stacked into deep belief nets and unrolled into deep
autoencoders (Hinton and Salakhutdinov 2006), denoising autoencoders (Vincent et al.
2008) and variational autoencoders (Kingma and Welling 2013)."""
