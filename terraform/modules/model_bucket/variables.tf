variable "bucket_name" {
  type        = string
  description = "Globally unique bucket name for model packages."
}

variable "force_destroy" {
  type        = bool
  description = "Allow terraform destroy to delete a bucket that still holds model packages."
}

variable "noncurrent_version_days" {
  type        = number
  description = "Days to keep overwritten or deleted object versions before they expire."
}

variable "sse_kms_arn" {
  type        = string
  description = "Customer-managed KMS key for SSE-KMS; null uses SSE-S3 (AES256)."
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
}
