"""The SavedModels test_keras_layer.py wraps, in the reusable SavedModel form
of tfhub.dev models (``variables``, ``trainable_variables``, ``regularization_losses``)."""

import os

BUCKETS, DIM = 64, 8
NAMES = ("embed", "guide", "training", "signatures")


def save_models(tf, root):
    """Save each test model as ``root/<name>`` (see NAMES)."""

    class TextEmbedding(tf.train.Checkpoint):
        """Strings -> mean of hashed word vectors, a reusable SavedModel like nnlm."""

        def __init__(self):
            super().__init__()
            self.table = tf.Variable(tf.random.stateless_normal([BUCKETS, DIM], seed=[1, 2]))
            self.variables = [self.table]
            self.trainable_variables = [self.table]
            self.regularization_losses = []

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def __call__(self, sentences):
            ids = tf.strings.to_hash_bucket_fast(tf.strings.split(sentences), BUCKETS)
            return tf.reduce_mean(tf.ragged.map_flat_values(tf.gather, self.table, ids), axis=1)

    class GuideModel(tf.train.Checkpoint):
        """The TF Hub guide's low-level example."""

        def __init__(self):
            super().__init__()
            self.v = tf.Variable(2.0)
            self.variables = [self.v]
            self.trainable_variables = [self.v]
            self.regularization_losses = [tf.function(input_signature=[])(lambda: 0.001 * self.v**2)]

        @tf.function(input_signature=[tf.TensorSpec(None, tf.float32)])
        def __call__(self, inputs):
            return inputs * self.v

    class WithTraining(tf.train.Checkpoint):
        """Adds 100 in training mode, so the tests see which mode it was called in."""

        def __init__(self):
            super().__init__()
            self.w = tf.Variable(1.0)
            self.variables = [self.w]
            self.trainable_variables = [self.w]

        @tf.function
        def __call__(self, x, training=False, shift=0.0):
            return x * self.w + (100.0 if training else 0.0) + shift

    class Signatures(tf.Module):
        """No __call__; a signature with two named outputs."""

        def __init__(self):
            super().__init__()
            self.k = tf.Variable(2.0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def multiples(self, x):
            return {"double": x * self.k, "triple": x * (self.k + 1.0)}

    with_training = WithTraining()
    for training in (False, True):
        for shift in (0.0, 5.0):
            with_training.__call__.get_concrete_function(tf.TensorSpec([None], tf.float32), training, shift)
    signatures = Signatures()
    tf.saved_model.save(TextEmbedding(), os.path.join(root, "embed"))
    tf.saved_model.save(GuideModel(), os.path.join(root, "guide"))
    tf.saved_model.save(with_training, os.path.join(root, "training"))
    tf.saved_model.save(signatures, os.path.join(root, "signatures"), signatures={"multiples": signatures.multiples})
