"""The features the end-to-end tests of `freshet run` share (offline_store_test, run_recovery_test): one of
each aggregation family and window kind over the events of `freshet generate`, as spec YAML lines."""

FEATURES_YAML = """\
  - {name: purchases_30m, aggregation: count, where: "type == 'purchase'", window: {type: sliding, size: 30m, slide: 1m}}
  - {name: avg_amount_1h, aggregation: mean, field: amount, where: "type == 'purchase'", window: {type: sliding, size: 1h}}
  - {name: categories_session, aggregation: count_distinct, field: category, where: "type == 'view'", window: {type: session, gap: 30m}}
  - {name: failed_logins_10m, aggregation: count, where: "type == 'login' and success == false", window: {type: sliding, size: 10m}}
  - {name: max_amount_24h, aggregation: max, field: amount, where: "type == 'purchase'", window: {type: sliding, size: 24h}}
  - {name: last_category, aggregation: last, field: category, window: {type: lifetime}}
  - {name: amount_sum_tumbling, aggregation: sum, field: amount, window: {type: tumbling, size: 1h}}
"""
