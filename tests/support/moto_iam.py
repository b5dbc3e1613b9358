"""Sets up a moto server as the guide's AWS account: a bucket and three IAM users
holding exactly the guide's read-write, read-only and path-specific policies.
Prints one line per user: NAME ACCESS_KEY_ID SECRET_ACCESS_KEY.
Usage: moto_iam.py ENDPOINT BUCKET   (makes exactly 12 requests)
The bucket is versioned and encrypts with SSE-KMS by default, as the guide recommends."""
import json
import sys

import boto3

endpoint, bucket = sys.argv[1], sys.argv[2]
kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
if endpoint.startswith("https://"):  # moto --ssl: a self-signed certificate
    import urllib3

    urllib3.disable_warnings()
    kw["verify"] = False
s3 = boto3.client("s3", **kw)
iam = boto3.client("iam", **kw)


def policy(object_actions, object_resource):
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["s3:GetBucketLocation", "s3:ListBucket"], "Resource": f"arn:aws:s3:::{bucket}"},
            {"Effect": "Allow", "Action": object_actions, "Resource": [object_resource]},
        ],
    }


policies = {
    "readwrite": policy(["s3:PutObject", "s3:DeleteObject", "s3:GetObject"], f"arn:aws:s3:::{bucket}/*"),
    "readonly": policy(["s3:GetObject"], f"arn:aws:s3:::{bucket}/*"),
    "pathonly": policy(["s3:PutObject", "s3:DeleteObject", "s3:GetObject"], f"arn:aws:s3:::{bucket}/litestream/*"),
}

s3.create_bucket(Bucket=bucket)
s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
s3.put_bucket_encryption(
    Bucket=bucket,
    ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms"}, "BucketKeyEnabled": True}]
    },
)
for name, doc in policies.items():
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=json.dumps(doc))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    print(name, key["AccessKeyId"], key["SecretAccessKey"])
