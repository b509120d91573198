data "aws_partition" "current" {}

locals {
  function_name = "${var.name}-backlog-publisher"
}

resource "aws_security_group" "publisher" {
  name_prefix = "${local.function_name}-"
  description = "Backlog publisher Lambda: no inbound, outbound to Redis and AWS APIs"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = local.function_name })
}

resource "aws_vpc_security_group_egress_rule" "publisher_out" {
  security_group_id = aws_security_group.publisher.id
  description       = "Outbound to Redis, CloudWatch and Auto Scaling"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "-1"
}

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "publisher" {
  name               = local.function_name
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "vpc_access" {
  role       = aws_iam_role.publisher.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
}

data "aws_iam_policy_document" "publisher" {
  statement {
    sid       = "PutScalingMetric"
    effect    = "Allow"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = [var.metric_namespace]
    }
  }

  statement {
    sid       = "ReadGroup"
    effect    = "Allow"
    actions   = ["autoscaling:DescribeAutoScalingGroups"]
    resources = ["*"]
  }

  statement {
    sid       = "WakeGroupFromZero"
    effect    = "Allow"
    actions   = ["autoscaling:SetDesiredCapacity"]
    resources = [var.asg_arn]
  }
}

resource "aws_iam_role_policy" "publisher" {
  name   = "backlog-publisher"
  role   = aws_iam_role.publisher.id
  policy = data.aws_iam_policy_document.publisher.json
}

resource "aws_cloudwatch_log_group" "publisher" {
  name              = "/aws/lambda/${local.function_name}"
  retention_in_days = var.log_retention_days
  tags              = var.tags
}

resource "aws_lambda_function" "publisher" {
  function_name = local.function_name
  role          = aws_iam_role.publisher.arn
  package_type  = "Image"
  image_uri     = var.image_uri
  architectures = ["x86_64"]
  memory_size   = 256
  timeout       = 30
  # One tick at a time; a slow tick must not overlap the next.
  reserved_concurrent_executions = 1

  # infra/docker/lambda/autoscaler.mjs -> workers/autoscaler/src/lambda.ts
  image_config {
    command = ["lambda/autoscaler.handler"]
  }

  vpc_config {
    subnet_ids         = var.subnet_ids
    security_group_ids = [aws_security_group.publisher.id, var.redis_client_security_group_id]
  }

  environment {
    variables = {
      PPSD_REDIS_URL                 = var.redis_url
      PPSD_MODELS                    = join(",", var.models)
      PPSD_ASG_NAME                  = var.asg_name
      PPSD_METRIC_NAMESPACE          = var.metric_namespace
      PPSD_METRIC_NAME               = var.metric_name
      PPSD_TARGET_BACKLOG_PER_WORKER = tostring(var.target_backlog_per_worker)
      PPSD_MAX_BATCH                 = tostring(var.max_batch)
      PPSD_WAKE_FROM_ZERO            = "true"
    }
  }

  tags       = var.tags
  depends_on = [aws_iam_role_policy_attachment.vpc_access, aws_cloudwatch_log_group.publisher]
}

resource "aws_cloudwatch_event_rule" "schedule" {
  name                = local.function_name
  description         = "Publish BullMQ backlog per worker for ${var.asg_name}"
  schedule_expression = var.schedule_expression
  tags                = var.tags
}

resource "aws_cloudwatch_event_target" "publisher" {
  rule = aws_cloudwatch_event_rule.schedule.name
  arn  = aws_lambda_function.publisher.arn
}

resource "aws_lambda_permission" "schedule" {
  statement_id  = "AllowEventBridgeSchedule"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.publisher.function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.schedule.arn
}
