//! The words of AWS IoT policies: every `iot:` action AWS defines and the
//! condition keys AWS IoT evaluates, so that `policy check` reports a
//! misspelt one (`iot:Conect`) instead of loading a statement that can
//! never match. Pure.
//!
//! The actions are the operations of botocore's `iot`, `iot-data` and
//! `iot-jobs-data` models (1.44) and the broker's own (`iot:Connect`,
//! `iot:Publish`, ...); IAM names an action after its operation.

/// Every `iot:` action, lowercase (action names are case-insensitive), sorted.
const ACTIONS: &[&str] = &[
    "acceptcertificatetransfer",
    "addthingtobillinggroup",
    "addthingtothinggroup",
    "associatesbomwithpackageversion",
    "associatetargetswithjob",
    "assumerolewithcertificate",
    "attachpolicy",
    "attachprincipalpolicy",
    "attachsecurityprofile",
    "attachthingprincipal",
    "cancelauditmitigationactionstask",
    "cancelaudittask",
    "cancelcertificatetransfer",
    "canceldetectmitigationactionstask",
    "canceljob",
    "canceljobexecution",
    "cleardefaultauthorizer",
    "confirmtopicruledestination",
    "connect",
    "createauditsuppression",
    "createauthorizer",
    "createbillinggroup",
    "createcertificatefromcsr",
    "createcertificateprovider",
    "createcommand",
    "createcustommetric",
    "createdimension",
    "createdomainconfiguration",
    "createdynamicthinggroup",
    "createfleetmetric",
    "createjob",
    "createjobtemplate",
    "createkeysandcertificate",
    "createmitigationaction",
    "createotaupdate",
    "createpackage",
    "createpackageversion",
    "createpolicy",
    "createpolicyversion",
    "createprovisioningclaim",
    "createprovisioningtemplate",
    "createprovisioningtemplateversion",
    "createrolealias",
    "createscheduledaudit",
    "createsecurityprofile",
    "createstream",
    "creatething",
    "createthinggroup",
    "createthingtype",
    "createtopicrule",
    "createtopicruledestination",
    "deleteaccountauditconfiguration",
    "deleteauditsuppression",
    "deleteauthorizer",
    "deletebillinggroup",
    "deletecacertificate",
    "deletecertificate",
    "deletecertificateprovider",
    "deletecommand",
    "deletecommandexecution",
    "deleteconnection",
    "deletecustommetric",
    "deletedimension",
    "deletedomainconfiguration",
    "deletedynamicthinggroup",
    "deletefleetmetric",
    "deletejob",
    "deletejobexecution",
    "deletejobtemplate",
    "deletemitigationaction",
    "deleteotaupdate",
    "deletepackage",
    "deletepackageversion",
    "deletepolicy",
    "deletepolicyversion",
    "deleteprovisioningtemplate",
    "deleteprovisioningtemplateversion",
    "deleteregistrationcode",
    "deleterolealias",
    "deletescheduledaudit",
    "deletesecurityprofile",
    "deletestream",
    "deletething",
    "deletethinggroup",
    "deletethingshadow",
    "deletethingtype",
    "deletetopicrule",
    "deletetopicruledestination",
    "deletev2logginglevel",
    "deprecatethingtype",
    "describeaccountauditconfiguration",
    "describeauditfinding",
    "describeauditmitigationactionstask",
    "describeauditsuppression",
    "describeaudittask",
    "describeauthorizer",
    "describebillinggroup",
    "describecacertificate",
    "describecertificate",
    "describecertificateprovider",
    "describecustommetric",
    "describedefaultauthorizer",
    "describedetectmitigationactionstask",
    "describedimension",
    "describedomainconfiguration",
    "describeencryptionconfiguration",
    "describeendpoint",
    "describeeventconfigurations",
    "describefleetmetric",
    "describeindex",
    "describejob",
    "describejobexecution",
    "describejobtemplate",
    "describemanagedjobtemplate",
    "describemitigationaction",
    "describeprovisioningtemplate",
    "describeprovisioningtemplateversion",
    "describerolealias",
    "describescheduledaudit",
    "describesecurityprofile",
    "describestream",
    "describething",
    "describethinggroup",
    "describethingregistrationtask",
    "describethingtype",
    "detachpolicy",
    "detachprincipalpolicy",
    "detachsecurityprofile",
    "detachthingprincipal",
    "disabletopicrule",
    "disassociatesbomfrompackageversion",
    "enabletopicrule",
    "getbehaviormodeltrainingsummaries",
    "getbucketsaggregation",
    "getcardinality",
    "getcommand",
    "getcommandexecution",
    "getconnection",
    "geteffectivepolicies",
    "getindexingconfiguration",
    "getjobdocument",
    "getloggingoptions",
    "getotaupdate",
    "getpackage",
    "getpackageconfiguration",
    "getpackageversion",
    "getpendingjobexecutions",
    "getpercentiles",
    "getpolicy",
    "getpolicyversion",
    "getregistrationcode",
    "getretainedmessage",
    "getstatistics",
    "getthingconnectivitydata",
    "getthingshadow",
    "gettopicrule",
    "gettopicruledestination",
    "getv2loggingoptions",
    "listactiveviolations",
    "listattachedpolicies",
    "listauditfindings",
    "listauditmitigationactionsexecutions",
    "listauditmitigationactionstasks",
    "listauditsuppressions",
    "listaudittasks",
    "listauthorizers",
    "listbillinggroups",
    "listcacertificates",
    "listcertificateproviders",
    "listcertificates",
    "listcertificatesbyca",
    "listcommandexecutions",
    "listcommands",
    "listcustommetrics",
    "listdetectmitigationactionsexecutions",
    "listdetectmitigationactionstasks",
    "listdimensions",
    "listdomainconfigurations",
    "listfleetmetrics",
    "listindices",
    "listjobexecutionsforjob",
    "listjobexecutionsforthing",
    "listjobs",
    "listjobtemplates",
    "listmanagedjobtemplates",
    "listmetricvalues",
    "listmitigationactions",
    "listnamedshadowsforthing",
    "listotaupdates",
    "listoutgoingcertificates",
    "listpackages",
    "listpackageversions",
    "listpolicies",
    "listpolicyprincipals",
    "listpolicyversions",
    "listprincipalpolicies",
    "listprincipalthings",
    "listprincipalthingsv2",
    "listprovisioningtemplates",
    "listprovisioningtemplateversions",
    "listrelatedresourcesforauditfinding",
    "listretainedmessages",
    "listrolealiases",
    "listsbomvalidationresults",
    "listscheduledaudits",
    "listsecurityprofiles",
    "listsecurityprofilesfortarget",
    "liststreams",
    "listsubscriptions",
    "listtagsforresource",
    "listtargetsforpolicy",
    "listtargetsforsecurityprofile",
    "listthinggroups",
    "listthinggroupsforthing",
    "listthingprincipals",
    "listthingprincipalsv2",
    "listthingregistrationtaskreports",
    "listthingregistrationtasks",
    "listthings",
    "listthingsinbillinggroup",
    "listthingsinthinggroup",
    "listthingtypes",
    "listtopicruledestinations",
    "listtopicrules",
    "listv2logginglevels",
    "listviolationevents",
    "publish",
    "putverificationstateonviolation",
    "receive",
    "registercacertificate",
    "registercertificate",
    "registercertificatewithoutca",
    "registerthing",
    "rejectcertificatetransfer",
    "removethingfrombillinggroup",
    "removethingfromthinggroup",
    "replacetopicrule",
    "retainpublish",
    "searchindex",
    "senddirectmessage",
    "setdefaultauthorizer",
    "setdefaultpolicyversion",
    "setloggingoptions",
    "setv2logginglevel",
    "setv2loggingoptions",
    "startauditmitigationactionstask",
    "startcommandexecution",
    "startdetectmitigationactionstask",
    "startnextpendingjobexecution",
    "startondemandaudittask",
    "startthingregistrationtask",
    "stopthingregistrationtask",
    "subscribe",
    "tagresource",
    "testauthorization",
    "testinvokeauthorizer",
    "transfercertificate",
    "untagresource",
    "updateaccountauditconfiguration",
    "updateauditsuppression",
    "updateauthorizer",
    "updatebillinggroup",
    "updatecacertificate",
    "updatecertificate",
    "updatecertificateprovider",
    "updatecommand",
    "updatecustommetric",
    "updatedimension",
    "updatedomainconfiguration",
    "updatedynamicthinggroup",
    "updateencryptionconfiguration",
    "updateeventconfigurations",
    "updatefleetmetric",
    "updateindexingconfiguration",
    "updatejob",
    "updatejobexecution",
    "updatemitigationaction",
    "updatepackage",
    "updatepackageconfiguration",
    "updatepackageversion",
    "updateprovisioningtemplate",
    "updaterolealias",
    "updatescheduledaudit",
    "updatesecurityprofile",
    "updatestream",
    "updatething",
    "updatethinggroup",
    "updatethinggroupsforthing",
    "updatethingshadow",
    "updatethingtype",
    "updatetopicruledestination",
    "validatesecurityprofilebehaviors",
];

/// `iot:` condition keys that stand alone, lowercase.
const KEYS: &[&str] = &[
    "iot:certificate.availablekeys",
    "iot:certificate.serialnumber",
    "iot:certificateid",
    "iot:clientid",
    "iot:clientmode",
    "iot:connectattributes",
    "iot:connection.thing.isattached",
    "iot:connection.thing.thingname",
    "iot:connection.thing.thingtypename",
    "iot:delete",
    "iot:domainname",
    "iot:lastwilltopic",
    "iot:thinggrouparn",
    "iot:tunneldestinationservice",
];

/// Distinguished-name attributes of `iot:Certificate.Subject.<A>` and
/// `iot:Certificate.Issuer.<A>` (spec aws-iot-auth.md §1.7), lowercase.
pub const NAME_ATTRIBUTES: &[&str] = &[
    "commonname",
    "country",
    "distinguishednamequalifier",
    "generationqualifier",
    "givenname",
    "initials",
    "organization",
    "organizationalunit",
    "pseudonym",
    "serialnumber",
    "state",
    "surname",
    "title",
];

/// Alternative-name types of `iot:Certificate.Subject.AlternativeName.<T>`.
const ALT_NAME_TYPES: &[&str] = &[
    "directoryname",
    "dnsname",
    "ipaddress",
    "rfc822name",
    "uniformresourceidentifier",
];

/// Whether an `Action` entry names nothing: an `iot:` action (or pattern
/// with `*` and `?`) that matches no AWS IoT action. Other services'
/// actions (Greengrass's, in policies shared with it) are not judged.
pub fn unknown_action(action: &str) -> bool {
    let lower = action.to_ascii_lowercase();
    let Some(name) = lower.strip_prefix("iot:") else {
        return false;
    };
    if name.contains(['*', '?']) {
        !ACTIONS
            .iter()
            .any(|a| wildcard(name.as_bytes(), a.as_bytes()))
    } else {
        ACTIONS.binary_search(&name).is_err()
    }
}

/// Whether a condition key is unknown: global `aws:` keys are all accepted,
/// `iot:` keys must be AWS IoT's, and any other key is unknown. Keys are
/// case-insensitive, as in IAM.
pub fn unknown_key(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    if lower.starts_with("aws:") {
        return false;
    }
    if !lower.starts_with("iot:") {
        return true;
    }
    if KEYS.contains(&lower.as_str()) {
        return false;
    }
    if let Some(attr) = lower.strip_prefix("iot:connection.thing.attributes[") {
        return !(attr.ends_with(']') && attr.len() > 1);
    }
    let Some(rest) = lower
        .strip_prefix("iot:certificate.subject.")
        .or_else(|| lower.strip_prefix("iot:certificate.issuer."))
    else {
        return true;
    };
    // `.N` selects another value, `.List` all of them.
    let base = match rest.rsplit_once('.') {
        Some((base, "list")) => base,
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => rest,
    };
    match base.strip_prefix("alternativename.") {
        Some(t) => !ALT_NAME_TYPES.contains(&t),
        None => !NAME_ATTRIBUTES.contains(&base),
    }
}

/// `*` is any run of characters, `?` one character.
fn wildcard(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, i));
                p += 1;
            }
            Some(&c) if c == b'?' || c == s[i] => {
                p += 1;
                i += 1;
            }
            _ => match star {
                Some((sp, si)) => {
                    p = sp + 1;
                    i = si + 1;
                    star = Some((sp, si + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions() {
        assert!(
            ACTIONS.windows(2).all(|w| w[0] < w[1]),
            "sorted for the search"
        );
        for known in [
            "iot:Connect",
            "iot:publish",
            "iot:*",
            "iot:Get*",
            "iot:Update?hingShadow",
            "*",
            "greengrass:*",
        ] {
            assert!(!unknown_action(known), "{known}");
        }
        for unknown in ["iot:Conect", "iot:Foo*", "iot:Publishh"] {
            assert!(unknown_action(unknown), "{unknown}");
        }
    }

    #[test]
    fn condition_keys() {
        for known in [
            "aws:SourceIp",
            "aws:PrincipalTag/team",
            "iot:ClientId",
            "IOT:CLIENTID",
            "iot:Connection.Thing.Attributes[role]",
            "iot:Certificate.Subject.CommonName.List",
            "iot:Certificate.Issuer.Organization.2",
            "iot:Certificate.Subject.AlternativeName.DNSName",
            "iot:Certificate.Issuer.AlternativeName.IPAddress.List",
            "iot:Certificate.AvailableKeys",
            "iot:ConnectAttributes",
            "iot:LastWillTopic",
        ] {
            assert!(!unknown_key(known), "{known}");
        }
        for unknown in [
            "iot:ClientIdd",
            "iot:Certificate.Subject.Colour",
            "iot:Certificate.Subject.AlternativeName.Email",
            "iot:Connection.Thing.Attributes[]",
            "ClientId",
            "s3:prefix",
        ] {
            assert!(unknown_key(unknown), "{unknown}");
        }
    }
}
