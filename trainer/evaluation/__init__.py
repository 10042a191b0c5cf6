"""Offline evaluation of artifacts, the pieces behind `trainer.evaluate.evaluate_artifact`.

tables.py     the test file's rows and the artifact's own tables (histories, users, items)
scorers.py    the artifact's ONNX graph fed as the inference server feeds it, one class per
              input contract (history only; user features + history; per-candidate features)
ranking.py    held-out items ranked against the catalogue or sampled negatives
pointwise.py  labelled rows (AUC, LogLoss, accuracy) and ratings (RMSE, MAE)
"""
