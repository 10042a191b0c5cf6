# Experiments (experiments/): model quality and studies on ML-100K, each `python -m experiments.X`.
# Included by the Makefile, which defines PY, STAMP and DATA.

.PHONY: quality ranking-quality retrieval-quality cold-start dp-table debias faithfulness
DEBIAS_SEEDS ?= 0,1,2
EXPLAIN_ARTIFACT ?= runs/quality/sasrec-seed0

quality: $(STAMP) ## Served NDCG@10 on ML-100K (leave-last-out), mean of 3 seeds
	$(PY) -m experiments.quality --data $(DATA) --out runs/quality --seeds 0,1,2

ranking-quality: $(STAMP) ## DeepFM / DCN-v2 / Conv1D AUC and the rating model's RMSE on ML-100K, mean of 3 seeds
	$(PY) -m experiments.ranking_quality --data $(DATA) --out runs/ranking_quality --seeds 0,1,2

retrieval-quality: $(STAMP) ## Two-tower served NDCG@10 and recall@200 on ML-100K (leave-last-out), mean of 3 seeds
	$(PY) -m experiments.retrieval_quality --data $(DATA) --out runs/retrieval_quality --seeds 0,1,2

cold-start: $(STAMP) ## Cold start on ML-100K, 3 seeds: 10 % of items held out, epoch chosen on 10 % other held-out items, vs popularity
	nice -n 10 $(PY) -m experiments.cold_start --data $(DATA) --out runs/cold_start_3seeds --seeds 0,1,2 --epochs 12 \
		--config '{"min_word_items": 2, "content_bias": true, "mask_seen": false}'

dp-table: $(STAMP) ## DP-SGD SASRec on ML-100K: leave-last-out NDCG@10 at several epsilon (Opacus)
	nice -n 10 $(PY) -m experiments.dp_table --data $(DATA) --out runs/dp_table --epochs 6 --max-len 20 --epsilons 1,4,16,64

debias: $(STAMP) ## Plain vs popularity-debiased SASRec on ML-100K: NDCG@10, coverage, Gini, tail recall
	nice -n 10 $(PY) -m experiments.debias --data $(DATA) --out runs/debias --seeds $(DEBIAS_SEEDS) \
		--variants plain,logit_adjust_0.5,pop_neg_no_logq

faithfulness: $(STAMP) ## Explanations on ML-100K: score drop removing the top explaining vs a random history item
	$(PY) -m experiments.faithfulness --artifact $(EXPLAIN_ARTIFACT) --out runs/faithfulness.json
