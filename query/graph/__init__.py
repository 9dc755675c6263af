"""The service graph: edges from spans and from mesh metrics (``edges.py``, ``istio_metrics.py``), the Kiali
graph model with health (``model.py``), its SVG rendering (``svg.py``)."""
