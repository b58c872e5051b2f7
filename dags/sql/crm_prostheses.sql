-- Every prosthesis with its owner and model (docs/pipeline.md): the CRM side of the join.
SELECT p.chip_id,
       p.active,
       c.user_id,
       c.region,
       m.name                 AS model_name,
       m.rated_cycles_per_day
FROM prostheses p
JOIN customers c         ON c.id = p.customer_id
JOIN prosthesis_models m ON m.id = p.model_id
