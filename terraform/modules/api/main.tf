data "aws_partition" "current" {}

locals {
  function_name = "${var.name}-api"
}

# The function URL is the public entry point; it is an AWS-managed HTTPS endpoint, so no security group
# opens an inbound port. This group only lets the function's ENIs call out (Redis, AWS APIs).
resource "aws_security_group" "api" {
  name_prefix = "${var.name}-api-"
  description = "API Lambda network interfaces: no inbound, outbound only"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-api" })
}

resource "aws_vpc_security_group_egress_rule" "api_out" {
  security_group_id = aws_security_group.api.id
  description       = "Outbound to Redis and AWS APIs"
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

resource "aws_iam_role" "api" {
  name               = local.function_name
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = var.tags
}

# Logs and VPC network interfaces; the API needs no other AWS permission (it talks only to Redis).
resource "aws_iam_role_policy_attachment" "vpc_access" {
  role       = aws_iam_role.api.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
}

resource "aws_cloudwatch_log_group" "api" {
  name              = "/aws/lambda/${local.function_name}"
  retention_in_days = var.log_retention_days
  tags              = var.tags
}

resource "aws_lambda_function" "api" {
  function_name = local.function_name
  role          = aws_iam_role.api.arn
  package_type  = "Image"
  image_uri     = var.image_uri
  architectures = ["x86_64"]
  memory_size   = var.memory_mb
  timeout       = var.timeout_seconds

  reserved_concurrent_executions = var.reserved_concurrency

  # infra/docker/lambda/api.mjs loads apps/api/src/lambda.ts (hono/aws-lambda streamHandle) through tsx.
  image_config {
    command = ["lambda/api.handler"]
  }

  vpc_config {
    subnet_ids         = var.subnet_ids
    security_group_ids = [aws_security_group.api.id, var.redis_client_security_group_id]
  }

  environment {
    variables = {
      PPSD_REDIS_URL      = var.redis_url
      PPSD_MODELS         = join(",", var.models)
      PPSD_BOOTSTRAP_KEYS = var.bootstrap_keys
      PPSD_KEY_SECRET     = var.key_secret
      PPSD_ADMIN_KEYS     = var.admin_keys
      NODE_OPTIONS        = "--enable-source-maps"
    }
  }

  tags       = var.tags
  depends_on = [aws_iam_role_policy_attachment.vpc_access, aws_cloudwatch_log_group.api]
}

# Public entry point: HTTPS, response streaming (SSE token streams), auth done by the app (Bearer keys).
resource "aws_lambda_function_url" "api" {
  function_name      = aws_lambda_function.api.function_name
  authorization_type = "NONE"
  invoke_mode        = "RESPONSE_STREAM"

  dynamic "cors" {
    for_each = length(var.cors_allow_origins) > 0 ? [1] : []
    content {
      allow_origins  = var.cors_allow_origins
      allow_methods  = ["GET", "POST", "PUT", "PATCH", "DELETE"]
      allow_headers  = ["authorization", "content-type", "idempotency-key", "last-event-id"]
      expose_headers = ["retry-after"]
      max_age        = 3600
    }
  }
}

resource "aws_lambda_permission" "function_url" {
  statement_id           = "FunctionURLAllowPublicAccess"
  action                 = "lambda:InvokeFunctionUrl"
  function_name          = aws_lambda_function.api.function_name
  principal              = "*"
  function_url_auth_type = "NONE"
}
