"""Batch and log keys: one spelling for each, used everywhere."""

# Batch keys (dictionaries produced by udl_med.data datasets).
IMAGE = "image"  # (B, C, *spatial) float in [-1, 1]
LABEL = "label"  # (B,) long, class index from the manifest's `label`
CT = "ct"  # paired / unpaired translation batches: CT image
MR = "mr"  # paired / unpaired translation batches: MR image
PATH = "path"  # source file of each item
MODALITY = "modality"
UNLABELED_IMAGE = "unlabeled_image"  # semi-supervised batches: an unlabeled item beside each labeled (image, label)

# Manifest columns (shared/DESIGN.md).
MANIFEST_COLUMNS = ("image", "label", "modality", "subject", "split")
# Extra columns of a manifest written by `udl-med synthesize` (readers accept them too).
SYNTHETIC_COLUMNS = ("synthetic", "model", "seed")
MODALITIES = ("CT", "MR")

# Files inside a model directory written by `train` or `export`.
MODEL_FILE = "udl_med_model.pt"
ENCODER_JSON = "encoder.json"
ENCODER_WEIGHTS = "encoder.pt"
CLASSIFIER_JSON = "classifier.json"  # export --format classifier
CLASSIFIER_WEIGHTS = "classifier.pt"

# Log keys of the autoencoder family (train_step / evaluate).
LOSS = "loss"
RECON = "recon"  # reconstruction term of the training loss
KL = "kl"  # KL term of the ELBO (VAE)
SPARSITY = "sparsity"  # sparsity penalty (sparse AE)
MEAN_ACTIVATION = "mean_activation"  # measured mean hidden activation (sparse AE)
RECON_MSE = "recon_mse"  # held-out reconstruction mean squared error, [-1, 1] scale
MEAN_IMAGE_MSE = "mean_image_mse"  # held-out error of predicting the batch's mean image
CORRUPTED_MSE = "corrupted_mse"  # held-out error of a corrupted copy C(x) (denoising AE)
DENOISED_MSE = "denoised_mse"  # held-out error of its reconstruction r(C(x)) (denoising AE)
STAGE = "stage"  # greedy stage of a stacked AE (number of blocks + 1 while fine-tuning)

# Log keys of the energy-based methods (RBM / DBN).
FREE_ENERGY = "free_energy"  # mean free energy F(v) of held-out visible vectors
PSEUDO_LL = "pseudo_log_likelihood"  # mean sum_i log p(v_i | v_-i) per image (Bernoulli visibles)
LOG_LIKELIHOOD = "log_likelihood"  # mean log p(v) per image: exact (tiny models) or AIS
LOG_Z_STD = "log_z_std"  # standard error of the AIS estimate of log Z
ACCURACY = "accuracy"  # held-out classification accuracy (fine-tuned classifiers)

# Log keys of the semi-supervised K+1 GAN.
CE = "ce"  # cross-entropy on the labeled batch
UNSUPERVISED = "unsupervised"  # K+1 real-versus-generated loss on the unlabeled and generated batches
GENERATOR = "generator"  # generator loss (feature matching or non-saturating)
D_REAL = "d_real"  # mean D(x) = Z / (Z + 1) on unlabeled data
D_FAKE = "d_fake"  # mean D(G(z))

# Synthesis (LAPGAN, two-stage GAN, synthesize, memorisation, downstream utility).
SYNTHETIC_MANIFEST = "manifest.csv"  # inside a synthesize output folder
SYNTHETIC_GRID = "samples.png"
FID = "fid"  # Frechet distance of samples to held-out images (train.sample_eval, udl-med fid)
KID = "kid"  # kernel inception distance, the same comparison
MEMORIZATION_RATE = "memorization/rate"  # fraction of synthetic images flagged as copies
UTILITY_ARMS = ("real", "real_plus_synthetic", "synthetic")  # the downstream-utility training sets (MLflow names: no "+")
CLASSIFIER_AUGMENTS = ("flip", "translation", "scaling", "rotation")  # the utility classifier's augmentation, applied in every arm

# Log keys of the `gan` method (its d_real / d_fake are D's mean raw scores: logits, or critic values).
LOSS_G = "loss_g"  # generator loss (adversarial, feature matching or unrolled, plus historical averaging)
LOSS_D = "loss_d"  # discriminator / critic loss, mean over the step's D steps
GRADIENT_PENALTY = "gradient_penalty"  # WGAN-GP penalty before its weight
WASSERSTEIN = "wasserstein"  # held-out critic estimate E f(x) - E f(G(z))
D_ACCURACY = "d_accuracy"  # held-out share of real scored > 0 and fakes scored < 0

# Log keys of the translation methods (CycleGAN, pix2pix); a direction or domain is appended as "_ct2mr", "_ct", ...
LOSS_G_GAN = "loss_g_gan"  # the generators' adversarial term
LOSS_CYCLE = "loss_cycle"  # weighted cycle-consistency loss
LOSS_IDENTITY = "loss_identity"  # weighted identity loss
LOSS_L1 = "loss_l1"  # pix2pix's L1 to the paired target, before its weight
CYCLE_L1 = "cycle_l1"  # held-out |F(G(x)) - x|_1
IDENTITY_L1 = "identity_l1"  # held-out |G(y) - y|_1
L1 = "l1"  # held-out L1 of a translation against its paired target
INFO = "info"  # InfoGAN: the mutual-information loss L_I of Q on fresh fakes (before its weight)
AUX_CLASS = "aux_class"  # AC-GAN: cross-entropy L_C of D's class head on its real (and fake) batch, before its weight

# Log keys of the D side every adversarial method shares (methods/adversarial.py).
ADA_P = "ada_p"  # ADA's augmentation probability p after the step
ADA_RT = "ada_rt"  # ADA's overfitting heuristic r_t = E[sign(D(x_real))] at the last adjustment of p
R1 = "r1_penalty"  # E ||grad_x D(x)||^2 on real data before its weight, at the steps R1 is due

# Precision, recall, density, coverage of generated samples (train.sample_eval, udl-med fid; metrics/prdc.py).
PRDC = ("precision", "recall", "density", "coverage")  # Kynkaanniemi et al. 2019 (k = 3), Naeem et al. 2020 (k = 5)
