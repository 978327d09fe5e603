"""The Open Inference Protocol (KServe v2 REST) with Triton's binary tensor data extension.

A routine is a model: its input features are the model's inputs, ``y`` and ``dy_d<param>``
its outputs, and parameter values, ``strategy`` and ``wrt`` ride in the request's
``parameters``. Requests go through the same :class:`~app.engine.Engine` as v1.

The package imports none of its modules (app.main takes the router and the error writer from
:mod:`app.api.v2.routes`), so that a module of it importing a sibling never imports back.
"""
