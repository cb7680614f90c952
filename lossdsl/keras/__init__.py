"""The Keras back end: a checked spec compiled to ``keras.ops`` and wrapped as Keras objects.

* ``compiler``: ``Program``, a checked formula as a function of ``(y_true, y_pred)``;
* ``loss``: ``FormulaLoss``, the ``keras.losses.Loss``;
* ``metrics``: ``TermMetric``, one metric per top-level term, and the parameters' state;
* ``callbacks``: ``ParamSchedule``, ``DynamicWeightAverage``;
* ``distribute``: the counts over the global batch under ``tf.distribute``.

Each of these modules imports Keras; this package itself does not.
"""
